"""Benchmark metrics, defined exactly as `vllm bench serve` defines them (benchmarks/serve.py).

- TTFT: send → first chunk with content.   - ITL: gaps between consecutive content chunks.
- E2EL: send → last content chunk.          - TPOT: (E2EL − TTFT) / (output_tokens − 1), requests with > 1 token.
- Throughputs divide totals over successful requests by the run's wall duration.
- Goodput counts requests meeting every SLO (ms); a 1-token request's TPOT counts as 0 for goodput.
"""

from collections import Counter
from collections.abc import Sequence

import numpy as np

from inference.bench.client import RequestResult

DEFAULT_PERCENTILES = (50, 90, 99)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """`["ttft:500", "tpot:100"]` (or one space-separated string) → {"ttft": 500.0, "tpot": 100.0} in ms."""
    slos = {}
    for spec in " ".join(specs).split():
        name, _, value = spec.partition(":")
        if name not in GOODPUT_METRICS or not value:
            raise ValueError(f"bad goodput SLO {spec!r}; use NAME:MS with NAME in {', '.join(GOODPUT_METRICS)}")
        slos[name] = float(value)
        if slos[name] <= 0:
            raise ValueError(f"goodput SLO {spec!r} must be positive")
    return slos


def tpot_of(result: RequestResult) -> float:
    """Time per output token after the first; 0 for requests with one token or fewer."""
    if result.output_tokens <= 1:
        return 0.0
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def distribution(name: str, values_s: Sequence[float], percentiles: Sequence[int]) -> dict[str, float]:
    """mean/median/std and pNN of a list of seconds, in ms, under vLLM's key names."""
    ms = np.asarray(values_s or [0.0], dtype=float) * 1000.0
    stats = {f"mean_{name}_ms": ms.mean(), f"median_{name}_ms": np.median(ms), f"std_{name}_ms": ms.std()}
    stats.update({f"p{p}_{name}_ms": np.percentile(ms, p) for p in percentiles})
    return {key: float(value) for key, value in stats.items()}


def is_good(result: RequestResult, slos_ms: dict[str, float]) -> bool:
    """Whether a successful request meets every SLO."""
    observed = {"ttft": result.ttft, "tpot": tpot_of(result), "e2el": result.latency}
    return all(observed[name] * 1000.0 <= limit for name, limit in slos_ms.items())


def max_gap(results: Sequence[RequestResult], start: float, end: float) -> float:
    """Longest stretch of the run (seconds) in which no request received a content chunk."""
    times = sorted(t for r in results for t in r.chunk_times if start <= t <= end)
    points = [start, *times, end]
    return max((later - earlier for earlier, later in zip(points, points[1:])), default=0.0)


def calculate_metrics(
    results: Sequence[RequestResult],
    duration_s: float,
    goodput_slos_ms: dict[str, float] | None = None,
    percentiles: Sequence[int] = DEFAULT_PERCENTILES,
) -> dict:
    """All summary metrics of one run (vLLM's names), plus error counts, retries and `max_gap_s`."""
    done = [r for r in results if r.success]
    total_input = sum(r.prompt_tokens or r.approx_input_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    good = sum(is_good(r, goodput_slos_ms) for r in done) if goodput_slos_ms else len(done)
    metrics = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": dict(Counter(r.error for r in results if not r.success)),
        "retries": sum(r.retries for r in results),
        "duration": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "output_tokens_counted_from_chunks": sum(not r.usage_reported for r in done),
        "total_content_chunks": sum(len(r.chunk_times) for r in done),
        "chunk_usage_mismatches": sum(r.usage_reported and len(r.chunk_times) != r.output_tokens for r in done),
        "request_throughput": len(done) / duration_s,
        "request_goodput": good / duration_s if goodput_slos_ms else None,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
    }
    metrics.update(distribution("ttft", [r.ttft for r in done], percentiles))
    metrics.update(distribution("tpot", [tpot_of(r) for r in done if r.output_tokens > 1], percentiles))
    metrics.update(distribution("itl", [gap for r in done for gap in r.itl], percentiles))
    metrics.update(distribution("e2el", [r.latency for r in done], percentiles))
    return metrics
