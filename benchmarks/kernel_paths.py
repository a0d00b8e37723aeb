"""The kernels' instruction-set paths against each other and against oneDNN/MKL through PyTorch, per layer shape
and row count, in one process: every candidate takes its turn in every round (interleaved, so a noisy neighbour
slows all of them alike), and the table shows the median (and min) over the rounds.

    python -m benchmarks.kernel_paths [--threads 2] [--rounds 15] [--decode/--no-decode] [--out results/kernel_paths.json]

Candidates: the fused kernels' w8a8, int8 (weight-only) and fp32 formats on every path this CPU supports
(inference.kernels.supported_paths(), forced per call with OPSLAB_CPU_PATH); PyTorch fp32 `F.linear` (MKL),
bf16 `F.linear` (oneDNN: AVX-512 BF16 or AMX where the CPU has them; x converted to bf16 and back, as an
engine would), and `torch._int_mm` int8 x int8 (oneDNN; x quantized per row and the int32 result scaled,
in PyTorch ops, both counted). With --decode (the default), whole fused decode steps of SmolLM2-135M
(int8 weight-only and w8a8 engines, M sequences of 64 tokens of context) are timed the same way, one
FusedDecoder per path on the same model and cache. The JSON records the machine, the CPU model and flags, and the kernel path
that would be chosen (inference.kernels.describe()).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from benchmarks.machine import machine
from inference import kernels
from inference.quant import quantize_int8

# SmolLM2-135M: hidden 576, 9 heads and 3 kv heads of 64, intermediate 1536, vocabulary 49152
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate|up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
ROW_COUNTS = (1, 4, 16, 64)
TARGET_SECONDS = 0.004  # each candidate's turn in a round: calls repeated for about this long


def on_path(path: str, call):
    """`call` run by the kernels of `path` (OPSLAB_CPU_PATH is read at every kernel call)."""
    def run(x):
        os.environ[kernels.PATH_ENV] = path
        return call(x)
    return run


def candidates(weight: torch.Tensor) -> dict:
    out_features = weight.shape[0]
    q8, s8 = quantize_int8(weight)
    q8_t, weight_bf16 = q8.t(), weight.bfloat16()

    def int_mm(x):
        row_scales = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        xq = torch.round(x / row_scales).to(torch.int8)
        return torch._int_mm(xq, q8_t) * row_scales * s8

    calls = {}
    for path in kernels.supported_paths():
        calls[f"w8a8 {path}"] = on_path(path, lambda x: kernels.linear(x, "w8a8", q8, out_features, scales=s8))
        calls[f"int8 {path}"] = on_path(path, lambda x: kernels.linear(x, "int8", q8, out_features, scales=s8))
        calls[f"fp32 {path}"] = on_path(path, lambda x: kernels.linear(x, "float32", weight, out_features))
    calls["torch fp32 F.linear"] = lambda x: F.linear(x, weight)
    calls["torch bf16 F.linear"] = lambda x: F.linear(x.bfloat16(), weight_bf16).float()
    calls["torch int8 _int_mm"] = int_mm
    return calls


def time_rounds(calls: dict, x: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """name -> seconds per call in each round; every round gives each candidate one turn, in order."""
    repeats = {}
    for name, call in calls.items():  # warm up, and size each turn to about TARGET_SECONDS
        call(x)
        start = time.perf_counter()
        call(x)
        repeats[name] = max(1, min(200, int(TARGET_SECONDS / max(time.perf_counter() - start, 1e-7))))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                call(x)
            samples[name].append((time.perf_counter() - start) / repeats[name])
    return samples


def run(rounds: int) -> list[dict]:
    rows = []
    for layer, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features) * 0.05
        calls = candidates(weight)
        for m in ROW_COUNTS:
            x = torch.randn(m, in_features)
            with torch.inference_mode():
                samples = time_rounds(calls, x, rounds)
            for name, seconds in samples.items():
                rows.append({"layer": layer, "out_features": out_features, "in_features": in_features, "m": m,
                             "candidate": name, "median_us": statistics.median(seconds) * 1e6,
                             "min_us": min(seconds) * 1e6})
    return rows


DECODE_ROW_COUNTS = (1, 4, 16)
DECODE_CONTEXT = 64


def run_decode(rounds: int) -> list[dict]:
    """Seconds per fused decode step of the real model, per quantization, M and path (interleaved rounds)."""
    from inference.build import cached_engine
    from inference.kernels.decoder import FusedDecoder
    from inference.llm import LLM
    from inference.model_store import fetch_model

    rows = []
    for quant in ("int8", "w8a8"):
        llm = LLM(cached_engine(fetch_model(), quant, 32), max_num_seqs=max(DECODE_ROW_COUNTS),
                  enable_prefix_caching=False, kv_cache_bytes=256 * 2**20)
        runner = llm.engine.runner
        decoders = {}
        for path in kernels.supported_paths():
            os.environ[kernels.PATH_ENV] = path
            decoders[f"{quant} {path}"] = FusedDecoder(runner.model, runner.kv_caches)
        blocks_per_seq = -(-DECODE_CONTEXT // runner.block_size)
        for m in DECODE_ROW_COUNTS:
            tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(m)]
            position = DECODE_CONTEXT - 1
            slots = [table[position // runner.block_size] * runner.block_size + position % runner.block_size
                     for table in tables]
            args = ([17] * m, [position] * m, slots, tables, [DECODE_CONTEXT] * m)
            calls = {name: (lambda _, decoder=decoder: decoder(*args)) for name, decoder in decoders.items()}
            with torch.inference_mode():
                samples = time_rounds(calls, None, rounds)
            for name, seconds in samples.items():
                rows.append({"layer": "decode step", "out_features": 0, "in_features": 0, "m": m, "candidate": name,
                             "median_us": statistics.median(seconds) * 1e6, "min_us": min(seconds) * 1e6})
    return rows


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(row["candidate"] for row in rows))
    lines = ["| layer (out x in) | M | " + " | ".join(names) + " | fastest |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for key in dict.fromkeys((row["layer"], row["m"]) for row in rows):
        cells = {row["candidate"]: row for row in rows if (row["layer"], row["m"]) == key}
        first = next(iter(cells.values()))
        fastest = min(cells, key=lambda name: cells[name]["median_us"])
        shape = f" ({first['out_features']}x{first['in_features']})" if first["out_features"] else ""
        lines.append(f"| {key[0]}{shape} | {key[1]} | "
                     + " | ".join(f"{cells[name]['median_us']:.0f}" if name in cells else "" for name in names)
                     + f" | {fastest} |")
    return "\n".join(lines)


@click.command()
@click.option("--threads", default=2, show_default=True, help="Threads for PyTorch and the kernels (one pool).")
@click.option("--rounds", default=15, show_default=True, help="Interleaved rounds; the table shows medians.")
@click.option("--decode/--no-decode", default=True, show_default=True,
              help="Also time whole fused decode steps of SmolLM2-135M per path.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/kernel_paths.json"), show_default=True)
def main(threads: int, rounds: int, decode: bool, out: Path) -> None:
    torch.set_num_threads(threads)
    chosen = os.environ.get(kernels.PATH_ENV)
    described = kernels.describe()
    try:
        rows = run(rounds)
        decode_rows = run_decode(rounds) if decode else []
    finally:  # candidates force paths through the environment: leave it as found
        os.environ.pop(kernels.PATH_ENV, None)
        if chosen is not None:
            os.environ[kernels.PATH_ENV] = chosen
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "kernels": described, "threads": threads, "rounds": rounds,
                               "unit": "microseconds per call, median (and min) over interleaved rounds",
                               "rows": rows, "decode_rows": decode_rows}, indent=2))
    click.echo(f"{described['cpu_model']}; kernel paths {', '.join(described['supported_paths'])} "
               f"(chosen: {described['path']}); amx: {described['amx']}; median us per call over {rounds} rounds")
    click.echo(table(rows))
    if decode_rows:
        click.echo("\nWhole fused decode steps of SmolLM2-135M, median us per step:")
        click.echo(table(decode_rows))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
