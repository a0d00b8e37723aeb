"""Micro-benchmarks for single engine components (the end-to-end benchmark is inference.benchmark)."""
