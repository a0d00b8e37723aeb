"""Memory and speed of weight-only quantized linears vs fp32 on SmolLM2-sized layers.

    python -m inference.benchmarks.quant_linear [--threads 2] [--repeats 200]

Compares, for 576x1536 and 1536x576 weights at M=1 and M=16: fp32 F.linear, our Int8Linear /
Int4Linear (dequantize to the activation dtype, then F.linear) and torch's packed CPU kernels
(`torch._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`). Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from inference.quant import QuantConfig, convert_for_runtime, quantize_state_dict

SHAPES = ((1536, 576), (576, 1536))  # (out, in): gate/up projection, down projection
BATCHES = (1, 16)


def time_ms(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall time of `fn()` in milliseconds after a short warm-up (best resists a busy box)."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[0] * 1e3, samples[len(samples) // 2] * 1e3


def quantized_module(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    """`linear` converted the way build + load_engine convert it."""
    holder = nn.Sequential(linear)
    state_dict = quantize_state_dict(holder.state_dict(), config, ["0"])
    convert_for_runtime(holder, config, ["0"])
    holder.load_state_dict(state_dict, assign=True)
    return holder[0]


def packed_kernels(weight: torch.Tensor) -> dict:
    """torch's own packed int8 / int4 CPU matmuls for `weight` (None when unavailable)."""
    q8 = torch.round(weight / (weight.abs().amax(1, keepdim=True) / 127)).to(torch.int8)
    s8 = weight.abs().amax(1) / 127
    kernels = {"torch_int8pack_mm": lambda x: torch._weight_int8pack_mm(x, q8, s8)}
    try:
        q4 = torch.randint(0, 16, weight.shape, dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
        scales_zeros = torch.ones(weight.shape[1] // 32, weight.shape[0], 2)
        kernels["torch_int4pack_mm"] = lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scales_zeros)
    except (RuntimeError, AttributeError):
        pass
    return kernels


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def run(repeats: int) -> list[dict]:
    rows = []
    for out_features, in_features in SHAPES:
        linear = nn.Linear(in_features, out_features, bias=False)
        modules = {"fp32": linear, "int8": quantized_module(linear, QuantConfig("int8")),
                   "int4_g32": quantized_module(linear, QuantConfig("int4", 32))}
        calls = dict(modules) | packed_kernels(linear.weight.detach())
        for batch in BATCHES:
            x = torch.randn(batch, in_features)
            for name, fn in calls.items():
                with torch.inference_mode():
                    best, median = time_ms(lambda: fn(x), repeats)
                nbytes = weight_bytes(modules[name]) if name in modules else None
                rows.append({"shape": f"{out_features}x{in_features}", "M": batch, "path": name,
                             "best_ms": round(best, 4), "median_ms": round(median, 4), "weight_bytes": nbytes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for row in run(args.repeats):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
