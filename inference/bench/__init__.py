"""Load tests for OpenAI-compatible inference servers, with `vllm bench serve` metric definitions.

Imports httpx, numpy, rich and matplotlib only: never torch, so `lab bench` starts fast.
"""
