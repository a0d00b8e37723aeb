"""matplotlib plots of a run document (Agg backend: no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

PERCENTILE_STYLES = {"median": "-", "p90": "--", "p99": ":"}


def by_endpoint(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped per endpoint, in load order."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["endpoint"], []).append(run)
    return groups


def load_axis(runs: list[dict]) -> tuple[str, list[float]]:
    """The x axis: concurrency for sweeps, request rate otherwise."""
    if runs[0]["concurrency"]:
        return "concurrency", [run["concurrency"] for run in runs]
    return "request rate (req/s)", [run["request_rate"] for run in runs]


def plot_throughput(runs: list[dict], path: Path) -> Path:
    """Output and total token throughput against load, one line per endpoint."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for endpoint, group in by_endpoint(runs).items():
        xlabel, xs = load_axis(group)
        axis.plot(xs, [run["metrics"]["output_throughput"] for run in group], "o-", label=f"{endpoint} output")
        axis.plot(xs, [run["metrics"]["total_token_throughput"] for run in group], "s--", label=f"{endpoint} total")
    axis.set(xlabel=xlabel, ylabel="tokens/s", title="Throughput", xticks=xs)
    return save(figure, axis, path)


def plot_latency(runs: list[dict], path: Path) -> Path:
    """TTFT and ITL percentiles against load, per endpoint."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric in zip(axes, ("ttft", "itl")):
        for endpoint, group in by_endpoint(runs).items():
            xlabel, xs = load_axis(group)
            for stat, style in PERCENTILE_STYLES.items():
                ys = [run["metrics"][f"{stat}_{metric}_ms"] for run in group]
                axis.plot(xs, ys, style, marker="o", label=f"{endpoint} {stat}")
        axis.set(xlabel=xlabel, ylabel="ms", title=metric.upper(), xticks=xs)
    return save(figure, axes[-1], path)


def save(figure, legend_axis, path: Path) -> Path:
    """Add a legend and grid, write the PNG, release the figure."""
    for axis in figure.axes:
        axis.grid(True, alpha=0.3)
    legend_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_plots(runs: list[dict], result_dir: Path, stem: str) -> list[Path]:
    """Both figures next to the JSON file."""
    return [
        plot_throughput(runs, result_dir / f"{stem}-throughput.png"),
        plot_latency(runs, result_dir / f"{stem}-latency.png"),
    ]
