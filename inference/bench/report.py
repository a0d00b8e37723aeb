"""Results out: the summary table, the JSON file, and the side-by-side `--compare` report."""

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from inference.bench.load import RunOutcome

SUMMARY_COLUMNS = {
    "completed": "ok",
    "failed": "failed",
    "request_throughput": "req/s",
    "output_throughput": "out tok/s",
    "total_token_throughput": "total tok/s",
    "median_ttft_ms": "TTFT p50",
    "p99_ttft_ms": "TTFT p99",
    "median_tpot_ms": "TPOT p50",
    "median_itl_ms": "ITL p50",
    "p99_itl_ms": "ITL p99",
    "median_e2el_ms": "E2EL p50",
    "request_goodput": "goodput",
    "max_gap_s": "max gap s",
}
COMPARE_METRICS = [key for key in SUMMARY_COLUMNS if key not in ("completed", "failed", "request_goodput")]


def run_record(outcome: RunOutcome, url: str) -> dict:
    """One run as plain JSON data."""
    load = outcome.load
    return {
        "endpoint": outcome.endpoint,
        "url": url,
        "label": load.label,
        "concurrency": load.concurrency,
        "request_rate": load.request_rate,
        "num_prompts": load.num_prompts,
        "metrics": outcome.metrics,
    }


def write_json(result: dict, result_dir: Path) -> Path:
    """Write the run document as bench-<UTC time>.json under `result_dir`."""
    result_dir.mkdir(parents=True, exist_ok=True)
    path = result_dir / time.strftime("bench-%Y%m%d-%H%M%S.json", time.gmtime())
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def fmt(value) -> str:
    """Numbers to short strings; None to a dash."""
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_table(runs: list[dict]) -> Table:
    """One row per endpoint and load level; latencies in ms."""
    table = Table(title="Benchmark summary (latencies in ms)")
    for header in ("endpoint", "load", *SUMMARY_COLUMNS.values(), "errors"):
        table.add_column(header, justify="left" if header in ("endpoint", "load", "errors") else "right")
    for run in runs:
        metrics = run["metrics"]
        errors = ", ".join(f"{kind}:{count}" for kind, count in metrics["errors"].items()) or "-"
        table.add_row(run["endpoint"], run["label"], *(fmt(metrics[key]) for key in SUMMARY_COLUMNS), errors)
    return table


def load_series(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """{series name: {load label: metrics}}; a series is one endpoint of one result file."""
    series: dict[str, dict[str, dict]] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            name = run["endpoint"] if len(paths) == 1 else f"{path.stem}:{run['endpoint']}"
            series.setdefault(name, {})[run["label"]] = run["metrics"]
    return series


def quotient(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratio(value, baseline) -> str:
    """value / baseline as "×1.23", or a dash when undefined."""
    share = quotient(value, baseline)
    return "-" if share is None else f"×{share:.2f}"


def compare_tables(paths: list[Path]) -> list[Table]:
    """Per load level: each metric for every series, with its ratio to the first series."""
    series = load_series(paths)
    names = list(series)
    baseline = series[names[0]]
    tables = []
    for label in baseline:
        table = Table(title=f"{label}: ratios against {names[0]}")
        table.add_column("metric")
        for name in names:
            table.add_column(name, justify="right")
        for key in COMPARE_METRICS:
            cells = []
            for name in names:
                metrics = series[name].get(label)
                value = metrics.get(key) if metrics else None
                cells.append(f"{fmt(value)} ({ratio(value, baseline[label].get(key))})")
            table.add_row(key, *cells)
        tables.append(table)
    return tables


def print_tables(tables: list[Table], console: Console | None = None) -> None:
    """Print tables to stdout (wide enough not to wrap in logs)."""
    console = console or Console(width=200)
    for table in tables:
        console.print(table)
