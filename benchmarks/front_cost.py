"""What the platform's front costs: the same load direct to the nodes, through one edge host's nginx, and
through the VIP, in one run; then the outage clients see over repeated failover drills per method.

    python -m benchmarks.front_cost [--rounds 3] [--concurrency 4] [--num-prompts 16] [--drills 5]

Load comes from the product's load tester (`python -m inference.bench`), each run in its own process, so the
client never shares an interpreter with this script. Paths:

- `direct`: the first inference node's own port.
- `nginx`: an edge host's own address (nginx, least_conn over both nodes).
- `vip`: the platform VIP (keepalived in front of the same nginx).

The default concurrency is 1: one request at a time keeps exactly one (identical) node busy on every path,
so the paths differ only by what the front adds to each request. At higher concurrency nginx spreads the
load over both nodes and measures the second node, not the front; `direct` then splits the load over
both nodes in two bench processes side by side (throughputs add up, the TTFT p50 is the mean of the two
nodes' p50s), which costs the client a second interpreter on the same machine.

The paths take turns within each round (rotating the order) so slow drifts of the shared machine hit them
alike; each metric is the median over the rounds. Overheads are relative to `direct`. Then
`lab drill failover --target inference --method M` runs `--drills` times per method; the outages' spread is
reported per method. Writes front-cost-<UTC time>.json and .png under --result-dir.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from lab_tasks.topology import EDGE_GROUP, Inventory, default_inventory_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PATHS = ("direct", "nginx", "vip")
METHODS = ("stop-nginx", "stop-keepalived", "stop-host")
TARGETS = {"throughput_overhead_pct": 3.0, "ttft_p50_overhead_pct": 5.0}  # nginx against direct


def bench(url: str, name: str, concurrency: int, num_prompts: int, options: list[str]) -> subprocess.Popen:
    """Start one `python -m inference.bench` run against `url`; its JSON lands in a temp dir read by `result`."""
    out = Path(tempfile.mkdtemp(prefix="front-cost-"))
    argv = [sys.executable, "-m", "inference.bench", "--endpoint", f"{name}={url}", "--concurrency", str(concurrency),
            "--num-prompts", str(num_prompts), "--result-dir", str(out), "--no-plots", *options]
    process = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process.result_dir = out  # type: ignore[attr-defined]
    return process


def result(process: subprocess.Popen, timeout_s: float) -> dict:
    """The metrics of a finished bench process (its only run)."""
    _, stderr = process.communicate(timeout=timeout_s)
    files = sorted(process.result_dir.glob("bench-*.json"))  # type: ignore[attr-defined]
    if process.returncode != 0 or not files:
        raise click.ClickException(f"inference.bench exited {process.returncode}: {stderr.strip()[-400:]}")
    metrics = json.loads(files[-1].read_text())["runs"][0]["metrics"]
    for file in files:
        file.unlink()
    process.result_dir.rmdir()  # type: ignore[attr-defined]
    return metrics


def merge_direct(parts: list[dict]) -> dict:
    """One `direct` result from the per-node runs: counts and throughputs add up, latencies average."""
    merged = {key: sum(p[key] for p in parts) for key in ("completed", "failed", "request_throughput",
                                                           "output_throughput")}
    for key in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_itl_ms"):
        merged[key] = statistics.mean(p[key] for p in parts if p.get(key) is not None)
    return merged


def measure_round(urls: dict, concurrency: int, num_prompts: int, options: list[str], order: list[str],
                  timeout_s: float) -> dict[str, dict]:
    """Every path once, in `order`."""
    found = {}
    for path in order:
        if path == "direct":
            nodes = urls["direct"] if concurrency > 1 else urls["direct"][:1]
            share_c, share_n = max(1, concurrency // len(nodes)), max(1, num_prompts // len(nodes))
            runs = [bench(url, f"direct{i}", share_c, share_n, options) for i, url in enumerate(nodes, 1)]
            found[path] = merge_direct([result(run, timeout_s) for run in runs])
        else:
            found[path] = {k: v for k, v in result(bench(urls[path], path, concurrency, num_prompts, options),
                                                   timeout_s).items() if not isinstance(v, (dict, list))}
    return found


def summarize(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per path the median over rounds of throughput and TTFT p50, and the overhead against `direct`."""
    summary = {}
    for path in PATHS:
        runs = [r[path] for r in rounds]
        summary[path] = {
            "request_throughput": statistics.median(r["request_throughput"] for r in runs),
            "output_throughput": statistics.median(r["output_throughput"] for r in runs),
            "median_ttft_ms": statistics.median(r["median_ttft_ms"] for r in runs),
            "failed": sum(r["failed"] for r in runs),
        }
    base = summary["direct"]
    for path in ("nginx", "vip"):
        summary[path]["throughput_overhead_pct"] = 100 * (1 - summary[path]["output_throughput"] / base["output_throughput"])
        summary[path]["ttft_p50_overhead_pct"] = 100 * (summary[path]["median_ttft_ms"] / base["median_ttft_ms"] - 1)
    return summary


def drills(methods: list[str], count: int) -> dict[str, list[dict]]:
    """`lab drill failover --target inference --method M --json`, `count` times per method."""
    lab = PROJECT_ROOT / ".venv" / "bin" / "lab"
    found: dict[str, list[dict]] = {}
    for method in methods:
        for attempt in range(count):
            done = subprocess.run([str(lab), "drill", "failover", "--target", "inference", "--method", method, "--json"],
                                  cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
            try:
                outcome = json.loads(done.stdout)
            except ValueError:
                outcome = {"error": done.stderr.strip()[-300:] or f"exit {done.returncode}"}
            found.setdefault(method, []).append(outcome)
            click.echo(f"  drill {method} {attempt + 1}/{count}: outage {outcome.get('outage_s', '?')} s", err=True)
    return found


def outage_stats(runs: list[dict]) -> dict:
    outages = [r["outage_s"] for r in runs if isinstance(r.get("outage_s"), (int, float))]
    if not outages:
        return {"count": 0}
    return {"count": len(outages), "min_s": min(outages), "median_s": statistics.median(outages),
            "max_s": max(outages), "outages_s": outages,
            "not_recovered": sum(not r.get("recovered", False) for r in runs)}


def plot(document: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, outages = document["summary"], document["outages"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, key, label in ((axes[0], "output_throughput", "output tok/s"), (axes[1], "median_ttft_ms", "TTFT p50 (ms)")):
        values = [summary[p][key] for p in PATHS]
        axis.bar(PATHS, values, color=["#888", "#4a7", "#47a"])
        axis.set_title(label)
        for x, front in enumerate(PATHS[1:], 1):
            pct = summary[front]["throughput_overhead_pct" if key == "output_throughput" else "ttft_p50_overhead_pct"]
            axis.annotate(f"{pct:+.1f} %", (x, values[x]), ha="center", va="bottom")
    methods = [m for m in outages if outages[m].get("count")]
    axes[2].boxplot([outages[m]["outages_s"] for m in methods], tick_labels=methods)
    for x, method in enumerate(methods, 1):
        axes[2].scatter([x] * len(outages[method]["outages_s"]), outages[method]["outages_s"], s=12, color="#a44")
    axes[2].set_title("failover outage (s)")
    fig.suptitle("What the front costs: direct to the nodes vs nginx vs the VIP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.command()
@click.option("--rounds", type=click.IntRange(1, 10), default=3, show_default=True, help="Turns of every path.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--num-prompts", type=click.IntRange(2, 512), default=24, show_default=True, help="Requests per path and round.")
@click.option("--input-len", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--output-len", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--drills", "drill_count", type=click.IntRange(0, 20), default=5, show_default=True, help="Drills per method.")
@click.option("--method", "methods", type=click.Choice(METHODS), multiple=True, help="Drill methods (default all).")
@click.option("--result-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("benchmarks/results"),
              show_default=True)
def main(rounds, concurrency, num_prompts, input_len, output_len, drill_count, methods, result_dir):
    """Direct vs nginx vs VIP under the same load, and the failover outage per drill method."""
    inventory = Inventory(default_inventory_path())
    endpoints = inventory.endpoints()
    edge = inventory.host(inventory.hosts(EDGE_GROUP)[0]).address
    urls = {"direct": endpoints["inference_nodes"], "nginx": f"http://{edge}", "vip": endpoints["inference"]}
    options = ["--api", "chat", "--input-len", str(input_len), "--output-len", str(output_len), "--warmup", "2",
               "--max-duration", "300", "--request-timeout", "120"]
    measured = []
    for number in range(rounds):
        order = list(PATHS[number % 3:] + PATHS[:number % 3])
        click.echo(f"round {number + 1}/{rounds}: {', '.join(order)}", err=True)
        measured.append(measure_round(urls, concurrency, num_prompts, options, order, timeout_s=900))
    summary = summarize(measured)
    drill_runs = drills(list(methods or METHODS), drill_count) if drill_count else {}
    document = {
        "created": time.time(), "urls": urls,
        "config": {"rounds": rounds, "concurrency": concurrency, "num_prompts": num_prompts, "input_len": input_len,
                   "output_len": output_len, "drills_per_method": drill_count},
        "targets": TARGETS, "rounds": measured, "summary": summary,
        "outages": {m: outage_stats(r) for m, r in drill_runs.items()}, "drills": drill_runs,
    }
    result_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("front-cost-%Y%m%d-%H%M%S", time.gmtime())
    (result_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(document, result_dir / f"{stem}.png")
    print(report(document))
    click.echo(f"results: {result_dir / stem}.json, .png", err=True)


def report(document: dict) -> str:
    summary = document["summary"]
    lines = ["path     out tok/s  req/s   TTFT p50 ms  throughput overhead  TTFT p50 overhead  failed"]
    for path in PATHS:
        s = summary[path]
        over = (f"{s['throughput_overhead_pct']:+8.1f} %            {s['ttft_p50_overhead_pct']:+6.1f} %"
                if path != "direct" else f"{'-':>10}            {'-':>8}")
        lines.append(f"{path:<8} {s['output_throughput']:9.1f}  {s['request_throughput']:5.2f}  "
                     f"{s['median_ttft_ms']:11.1f}  {over}          {s['failed']}")
        if path == "nginx":
            ok = all(s[key] < limit for key, limit in TARGETS.items())
            lines[-1] += f"   (targets < {TARGETS['throughput_overhead_pct']:g} % / < {TARGETS['ttft_p50_overhead_pct']:g} %: " \
                         f"{'met' if ok else 'MISSED'})"
    for method, stats in document["outages"].items():
        if stats.get("count"):
            lines.append(f"drill {method:<16} outage min {stats['min_s']:.2f}  median {stats['median_s']:.2f}  "
                         f"max {stats['max_s']:.2f} s over {stats['count']}, not recovered {stats['not_recovered']}")
        else:
            lines.append(f"drill {method:<16} no result")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
