"""The numbers out of both benchmarks: the one target table, ratios, tables and plots.

Ratios divide with `inference.bench.report.quotient` and the plots go through `inference.bench.plots`, the
product's load tester, so there is one way to divide and one way to draw.
"""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from benchmarks.names import BASELINES, HF, LLAMA_CPP_PYTHON, LLAMA_SERVER, OURS, QUANTIZED, is_ours
from inference.bench.plots import by_endpoint, plt, save
from inference.bench.report import fmt, quotient

TARGET_LEVEL = 16  # the server targets are stated at 16 concurrent requests

# (benchmark, name, what it compares, relation, bound): every performance target, in one place.
TARGETS = (
    ("engine", "concurrent_vs_hf", "best ours output tok/s at --concurrency / HF generate's on the same batch",
     ">=", 3.0),
    ("engine", "quantized_batch1_vs_llama_cpp_python",
     "best of ours-int8/int4/w8a8 batch-1 decode / llama-cpp-python's (both in-process)", ">=", 1.0),
    ("engine", "fp32_fraction_of_roofline", "ours-fp32 batch-1 decode / its roofline", ">=", 0.6),
    ("engine", "ttft_vs_llama_cpp_python", "best ours TTFT / llama-cpp-python's (both in-process)", "<=", 1.0),
    ("servers", "output_throughput_vs_llama_server_c16", "our server's output tok/s / llama-server's at 16", ">=",
     2.0),
    ("servers", "median_ttft_vs_llama_server_c16", "our server's p50 TTFT / llama-server's at 16", "<=", 0.5),
    ("servers", "server_overhead_pct_c16", "% of the offline engine's tok/s that serving loses at 16", "<", 10.0),
)


def target_rows(benchmark: str, values: dict[str, tuple[float | None, str | None]]) -> dict[str, dict]:
    """{target: {what, value, by, bound, met}} for one benchmark; met is None where a number is missing."""
    compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
    rows = {}
    for kind, name, what, relation, bound in TARGETS:
        if kind != benchmark:
            continue
        value, by = values.get(name, (None, None))
        rows[name] = {"what": what, "value": value, "by": by, "bound": f"{relation} {bound:g}",
                      "met": None if value is None else compare[relation](float(value), bound)}
    return rows


# ---- in-process engines ----

def engine_targets(engines: dict[str, dict]) -> dict[str, dict]:
    """The engine targets from `engines` ({name: result}); each names the engine of ours that gave it."""
    def best(names, key, pick=max):
        values = {n: engines[n][key] for n in names if n in engines and engines[n][key] is not None}
        if not values:
            return None, None
        name = pick(values, key=values.get)
        return values[name], name

    ours = [name for name in OURS if name not in BASELINES]
    concurrent, concurrent_by = best(ours, "output_tok_s_concurrent")
    batch1, batch1_by = best(QUANTIZED, "decode_tok_s_batch1")
    ttft, ttft_by = best(ours, "ttft_ms", min)
    return target_rows("engine", {
        "concurrent_vs_hf": (quotient(concurrent, best([HF], "output_tok_s_concurrent")[0]), concurrent_by),
        "quantized_batch1_vs_llama_cpp_python": (
            quotient(batch1, best([LLAMA_CPP_PYTHON], "decode_tok_s_batch1")[0]), batch1_by),
        "fp32_fraction_of_roofline": best(["ours-fp32"], "fraction_of_roofline"),
        "ttft_vs_llama_cpp_python": (quotient(ttft, best([LLAMA_CPP_PYTHON], "ttft_ms", min)[0]), ttft_by),
    })


def engine_table(report: dict) -> Table:
    table = Table(title=f"In-process engines, {report['config']['threads']} threads "
                        f"(roofline: {report['read_bandwidth_gb_s']:.1f} GB/s, {report['bandwidth_source']})")
    for header in ("engine", "arithmetic", "TTFT ms", "b1 tok/s", f"c{report['config']['concurrency']} tok/s",
                   "RSS MB", "roofline"):
        table.add_column(header, justify="left" if header in ("engine", "arithmetic") else "right")
    for name, result in report["engines"].items():
        table.add_row(name, result["arithmetic"], fmt(result["ttft_ms"]), fmt(result["decode_tok_s_batch1"]),
                      fmt(result["output_tok_s_concurrent"]), fmt(result["peak_rss_mb"]),
                      f"{result['fraction_of_roofline']:.0%}")
    return table


def plot_engines(report: dict, path: Path) -> Path:
    """Batch-1 decode, concurrent output tok/s and TTFT per engine; ours blue, peers orange."""
    metrics = [("decode_tok_s_batch1", "batch-1 decode tok/s"),
               ("output_tok_s_concurrent", f"{report['config']['concurrency']} concurrent: output tok/s"),
               ("ttft_ms", f"TTFT ms ({report['config']['prompt_tokens']}-token prompt)")]
    names = list(report["engines"])
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8))
    for axis, (key, title) in zip(axes, metrics):
        axis.bar(names, [report["engines"][n][key] or 0 for n in names],
                 color=["tab:blue" if is_ours(n) else "tab:orange" for n in names])
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---- servers ----

def by_server_and_level(runs: list[dict]) -> dict[str, dict[int, dict]]:
    """{server: {concurrency: metrics}}."""
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        table.setdefault(run["endpoint"], {})[run["concurrency"]] = run["metrics"]
    return table


def server_ratios(runs: list[dict], offline: list[dict], ours: str) -> dict:
    """Our server (named `ours`) against every peer that ran, per level, the server overhead against the
    offline engine, and the server targets."""
    servers = by_server_and_level(runs)
    mine = servers.get(ours, {})

    def versus(peer: dict[int, dict]) -> dict[str, dict]:
        return {f"c{level}": {key: quotient(mine[level].get(key), peer.get(level, {}).get(key))
                              for key in ("output_throughput", "median_ttft_ms")} for level in sorted(mine)}

    ratios = {f"{ours}/{peer}": versus(servers[peer]) for peer in (LLAMA_SERVER, LLAMA_CPP_PYTHON, HF)
              if peer in servers and ours in servers}
    offline_tput = {record["concurrency"]: record["output_throughput"] for record in offline}
    overhead = {}
    for level in sorted(mine):
        share = quotient(mine[level]["output_throughput"], offline_tput.get(level))
        overhead[f"c{level}"] = None if share is None else 100.0 * (1.0 - share)
    at_target = ratios.get(f"{ours}/{LLAMA_SERVER}", {}).get(f"c{TARGET_LEVEL}", {})
    targets = target_rows("servers", {
        "output_throughput_vs_llama_server_c16": (at_target.get("output_throughput"), ours),
        "median_ttft_vs_llama_server_c16": (at_target.get("median_ttft_ms"), ours),
        "server_overhead_pct_c16": (overhead.get(f"c{TARGET_LEVEL}"), ours),
    })
    return {"ratios": ratios, "server_overhead_pct": overhead, "targets": targets}


def servers_table(document: dict) -> Table:
    """One row per server and level: what it computes in, output tok/s, p50 TTFT, and the token check."""
    table = Table(title=f"Servers over one HTTP client (inference.bench), {document['config']['threads']} threads")
    for header in ("server", "arithmetic", "conc", "out tok/s", "TTFT p50 ms", "ITL p50 ms", "tokens from",
                   "chunks / tokens"):
        table.add_column(header, justify="left" if header in ("server", "arithmetic", "tokens from") else "right")
    for run in document["runs"]:
        metrics = run["metrics"]
        source = "chunks" if metrics["output_tokens_counted_from_chunks"] else "usage"
        table.add_row(run["endpoint"], document["arithmetic"][run["endpoint"]], str(run["concurrency"]),
                      fmt(metrics["output_throughput"]), fmt(metrics["median_ttft_ms"]), fmt(metrics["median_itl_ms"]),
                      source, f"{metrics['total_content_chunks']} / {metrics['total_output_tokens']}")
    return table


def ratio_table(document: dict) -> Table:
    """One row per level: our output tok/s and p50 TTFT against each peer, and server overhead."""
    ours = document["ours"]
    mine = by_server_and_level(document["runs"]).get(ours, {})
    pairs = [key for key in document["ratios"]]
    peers = [key.split("/", 1)[1] for key in pairs]
    table = Table(title=f"{ours} vs peers (ratios = ours ÷ peer; TTFT: lower is better)")
    for header in ("conc", "ours tok/s", *(f"÷{p} tok/s" for p in peers), "ours TTFT p50 ms",
                   *(f"÷{p} TTFT" for p in peers), "offline tok/s", "overhead %"):
        table.add_column(header, justify="right")
    offline = {record["concurrency"]: record["output_throughput"] for record in document["offline"]}
    for level in sorted(mine):
        label = f"c{level}"
        cells = [document["ratios"][pair][label] for pair in pairs]
        table.add_row(str(level), fmt(mine[level]["output_throughput"]),
                      *(fmt(cell["output_throughput"]) for cell in cells), fmt(mine[level]["median_ttft_ms"]),
                      *(fmt(cell["median_ttft_ms"]) for cell in cells), fmt(offline.get(level)),
                      fmt(document["server_overhead_pct"].get(label)))
    return table


def plot_servers(document: dict, path: Path) -> Path:
    """Output tok/s and p50 TTFT against concurrency, one line per server (+ the offline engine's throughput)."""
    figure, (throughput, ttft) = plt.subplots(1, 2, figsize=(12, 4.5))
    for server, group in by_endpoint(document["runs"]).items():
        levels = [run["concurrency"] for run in group]
        throughput.plot(levels, [run["metrics"]["output_throughput"] for run in group], "o-", label=server)
        ttft.plot(levels, [run["metrics"]["median_ttft_ms"] for run in group], "o-", label=server)
    if document["offline"]:
        throughput.plot([r["concurrency"] for r in document["offline"]],
                        [r["output_throughput"] for r in document["offline"]], "k--", label="offline engine")
    throughput.set(xlabel="concurrency", ylabel="output tokens/s", title="Output throughput", xscale="log")
    ttft.set(xlabel="concurrency", ylabel="ms", title="TTFT p50", xscale="log", yscale="log")
    levels = sorted({run["concurrency"] for run in document["runs"]})
    for axis in (throughput, ttft):
        axis.set_xticks(levels, [str(level) for level in levels])
    throughput.legend(fontsize="small")
    return save(figure, ttft, path)


def targets_lines(targets: dict[str, dict]) -> list[str]:
    lines = []
    for name, target in targets.items():
        value = "n/a" if target["value"] is None else f"{target['value']:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        by = f", by {target['by']}" if target["by"] else ""
        lines.append(f"target {name}: {value}{by} (want {target['bound']}; {target['what']}) -> {verdict}")
    return lines

