"""Speed and weight bytes of the linear-layer paths on SmolLM2's layer shapes, side by side in one run.

    python -m benchmarks.quant_linear [--threads 2] [--repeats 100] [--out results/quant_linear.json]

Paths, for each (out, in) shape and row count M: MKL fp32 `F.linear` (the baseline every ratio divides by);
the fused AVX2 kernel on fp32, int8 and int4-g32 weights, and int8 weights times int8 activations (w8a8)
(inference/kernels); the PyTorch way to run
quantized weights (dequantize, then `F.linear`); torch's packed CPU kernels (`torch._weight_int8pack_mm`,
`aten._weight_int4pack_mm_for_cpu`). Prints a table of median ms and speed-up vs fp32, writes JSON.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from benchmarks.machine import machine
from inference import kernels
from inference.quant import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8

SHAPES = ((960, 576), (3072, 576), (576, 1536), (49152, 576))  # qkv, gate|up, down, head
ROW_COUNTS = (1, 16, 64, 256)


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2] * 1e3


def paths(weight: torch.Tensor) -> dict[str, tuple]:
    """name -> (call taking x, bytes of weights it reads)."""
    out_features, in_features = weight.shape
    q8, s8 = quantize_int8(weight)
    p4, s4, m4 = quantize_int4(weight, 32)
    s4, m4 = s4.float(), m4.float()
    calls = {
        "fp32 F.linear": (lambda x: F.linear(x, weight), weight.numel() * 4),
        "fp32 fused": (lambda x: kernels.linear(x, "float32", weight, out_features), weight.numel() * 4),
        "int8 fused": (lambda x: kernels.linear(x, "int8", q8, out_features, scales=s8), q8.numel() + s8.numel() * 4),
        "int4 fused": (lambda x: kernels.linear(x, "int4", p4, out_features, scales=s4, mins=m4, group_size=32),
                       p4.numel() + s4.numel() * 8),
        "w8a8 fused": (lambda x: kernels.linear(x, "w8a8", q8, out_features, scales=s8), q8.numel() + s8.numel() * 4),
        "int8 dequant+F.linear": (lambda x: F.linear(x, dequantize_int8(q8, s8, torch.float32)), q8.numel()),
        "int4 dequant+F.linear": (lambda x: F.linear(x, dequantize_int4(p4, s4, m4, in_features, torch.float32)),
                                  p4.numel()),
        "torch _weight_int8pack_mm": (lambda x: torch._weight_int8pack_mm(x, q8, s8), q8.numel()),
    }
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, weight.shape,
                                                                                  dtype=torch.int32), 1)
        scales_zeros = torch.ones(in_features // 32, out_features, 2)
        calls["torch _weight_int4pack_mm"] = (
            lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scales_zeros), p4.numel())
    except (RuntimeError, AttributeError):
        pass
    return calls


def run(repeats: int, slow_paths_up_to: int = 16) -> list[dict]:
    rows = []
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features) * 0.05
        calls = paths(weight)
        for m in ROW_COUNTS:
            x = torch.randn(m, in_features)
            baseline = None
            for name, (call, nbytes) in calls.items():
                if m > slow_paths_up_to and ("dequant" in name or name.startswith("torch _weight")):
                    continue  # 10-40x slower than fp32; their trend is clear by M=16
                with torch.inference_mode():
                    ms = median_ms(lambda: call(x), max(3, repeats // max(1, m // 16)))
                baseline = baseline or ms
                rows.append({"shape": f"{out_features}x{in_features}", "M": m, "path": name, "median_ms": ms,
                             "speedup_vs_fp32_F.linear": baseline / ms, "weight_bytes": nbytes,
                             "GB_per_s": nbytes / ms / 1e6, "GFLOPS": 2 * m * weight.numel() / ms / 1e6})
    return rows


@click.command("quant_linear", help=__doc__.splitlines()[0])
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results/quant_linear.json"),
              show_default=True)
def main(threads: int, repeats: int, out: Path) -> None:
    torch.set_num_threads(threads)
    rows = run(repeats)
    print(f"{'shape':>10} {'M':>4} {'path':28} {'ms':>9} {'vs fp32':>8} {'GB/s':>7} {'GFLOPS':>7}")
    for r in rows:
        print(f"{r['shape']:>10} {r['M']:4} {r['path']:28} {r['median_ms']:9.3f} "
              f"{r['speedup_vs_fp32_F.linear']:7.2f}x {r['GB_per_s']:7.1f} {r['GFLOPS']:7.1f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": threads, "machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(prog_name="python -m benchmarks.quant_linear")
