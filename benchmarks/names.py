"""One set of names for what the benchmarks compare, and the arithmetic each one runs in.

Engines of ours are `ours-<mode>` in-process and as servers alike; the peers are `hf-transformers`
(float32), `hf-transformers-bf16` (in-process only: HF's fastest dtype on CPUs with AVX512_BF16 or AMX),
`llama-cpp-python` and `llama-server`. Every table shows `ARITHMETIC` next to the name, so a weight-only
mode is never read as a peer that also quantizes its activations (llama.cpp's CPU matmuls round the
activations to 8 bits, like our w8a8).
"""
from inference.kernels import PATHS

OURS = {  # engine name: (quant mode of its build, environment it runs under)
    "ours-fp32": ("none", {}),
    "ours-fp32-torch": ("none", {"OPSLAB_CPU_KERNELS": "0"}),
    "ours-int8": ("int8", {}),
    "ours-int8-per-op": ("int8", {"OPSLAB_FUSED_DECODE": "0"}),
    "ours-int4": ("int4", {}),
    "ours-w8a8": ("w8a8", {}),
}
BASELINES = ("ours-fp32-torch", "ours-int8-per-op")  # our own baselines: never count as ours in the targets
QUANTIZED = ("ours-int8", "ours-int4", "ours-w8a8")
OURS_MODES = tuple(name for name in OURS if name not in BASELINES)  # what the targets count as ours
HF = "hf-transformers"
HF_BF16 = "hf-transformers-bf16"
HF_ENGINES = (HF, HF_BF16)  # the targets compare against whichever ran fastest
LLAMA_CPP_PYTHON = "llama-cpp-python"
LLAMA_SERVER = "llama-server"
LLAMA_CPP = (LLAMA_CPP_PYTHON, LLAMA_SERVER)
PEERS = (*HF_ENGINES, *LLAMA_CPP)

ARITHMETIC = {
    "ours-fp32": "fp32 weights, fp32 activations",
    "ours-fp32-torch": "fp32 weights, fp32 activations (plain PyTorch ops)",
    "ours-int8": "int8 weights, fp32 activations (weight-only)",
    "ours-int8-per-op": "int8 weights, fp32 activations (weight-only; op-by-op kernels)",
    "ours-int4": "int4 g32 weights, fp32 activations (weight-only)",
    "ours-w8a8": "int8 weights x int8 activations (w8a8)",
    HF: "fp32 weights (the GGUF dequantized), fp32 activations",
    HF_BF16: "bf16 weights (the GGUF dequantized), bf16 activations",
    LLAMA_CPP_PYTHON: "GGUF weights as stored, activations rounded to 8 bits in each matmul",
    LLAMA_SERVER: "GGUF weights as stored, activations rounded to 8 bits in each matmul",
}


def ours(quant: str) -> str:
    """Our engine's name for a build's quant mode ("none" -> ours-fp32)."""
    return "ours-fp32" if quant == "none" else f"ours-{quant}"


def is_ours(name: str) -> bool:
    return name in OURS


def arithmetic(name: str, gguf_type: str | None = None, kernel_path: str | None = None) -> str:
    """What `name` multiplies in; for the llama.cpp peers, the GGUF's weight type when known; for our quantized
    modes on a kernel path with bf16 products, that their int8 output head multiplies in bf16."""
    text = ARITHMETIC[name]
    if name in QUANTIZED and kernel_path in PATHS and PATHS[kernel_path].bf16_products:
        text += "; int8 head in bf16 products"
    return text.replace("GGUF weights as stored", f"{gguf_type} weights") if gguf_type and name in LLAMA_CPP else text
