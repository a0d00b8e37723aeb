"""Measuring code beside the product (not part of the installed package): our engine and server against
HF transformers and llama.cpp, like for like. `python -m benchmarks.engine` compares in-process engines,
`python -m benchmarks.servers` compares servers over the product's load tester (inference.bench), and
`python -m benchmarks.quant_linear` times the linear-layer kernels. See benchmarks/README.md."""
