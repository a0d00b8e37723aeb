"""`python -m inference.bench ...`: the load-test CLI (same command as `lab bench`)."""

from inference.bench.cli import bench

bench(prog_name="python -m inference.bench")
