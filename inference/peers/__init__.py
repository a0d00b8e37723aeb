"""The servers our inference server is measured against, how to launch them, and the comparison (issue 7)."""
