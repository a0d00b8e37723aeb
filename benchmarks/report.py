"""The numbers out of both benchmarks: the one target table, ratios, tables and plots.

Ratios divide with `inference.bench.report.quotient` and the plots go through `inference.bench.plots`, the
product's load tester, so there is one way to divide and one way to draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from benchmarks.names import HF, HF_ENGINES, LLAMA_CPP_PYTHON, LLAMA_SERVER, OURS_MODES, QUANTIZED, is_ours
from inference.bench.plots import by_endpoint, plt, save
from inference.bench.report import fmt, quotient

TARGET_LEVEL = 16  # the server targets are stated at 16 concurrent requests

# (benchmark, name, what it compares, relation, bound): every performance target, in one place.
TARGETS = (
    ("engine", "concurrent_vs_hf",
     "ours output tok/s at --concurrency / the fastest HF engine's (fp32 or bf16) on the same batch", ">=", 3.0),
    ("engine", "quantized_batch1_vs_llama_cpp_python",
     "ours-int8/int4/w8a8 batch-1 decode / llama-cpp-python's (both in-process)", ">=", 1.5),
    ("engine", "fp32_fraction_of_roofline", "ours-fp32 batch-1 decode / its roofline", ">=", 0.6),
    ("engine", "ttft_vs_llama_cpp_python", "ours TTFT / llama-cpp-python's (both in-process)", "<=", 1.0),
    ("servers", "output_throughput_vs_llama_server_c16", "our server's output tok/s / llama-server's at 16", ">=",
     2.0),
    ("servers", "offline_vs_llama_server_c16",
     "the offline engine's tok/s (LLM.generate in batches of 16) / llama-server's output tok/s at 16", ">=", 2.5),
    ("servers", "median_ttft_vs_llama_server_c16", "our server's p50 TTFT / llama-server's at 16", "<=", 0.5),
    ("servers", "server_overhead_pct_c16", "% of the offline engine's tok/s that serving loses at 16", "<", 10.0),
)
COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}


@dataclass(frozen=True)
class Measured:
    """One target's number: the best value, the engine of ours that gave it, what it was compared with, and
    (engine benchmark) the value of each engine of ours that ran, best first."""

    value: float | None
    by: str | None
    versus: str | None
    per_engine: dict[str, float | None] | None = None


def target_rows(benchmark: str, values: dict[str, Measured]) -> dict[str, dict]:
    """{target: {what, value, by, versus, bound, met[, per_engine: {engine: {value, met}}]}} for one benchmark;
    met is None where a number is missing."""
    rows = {}
    for kind, name, what, relation, bound in TARGETS:
        if kind != benchmark:
            continue
        measured = values.get(name, Measured(None, None, None))
        rows[name] = {"what": what, "value": measured.value, "by": measured.by, "versus": measured.versus,
                      "bound": f"{relation} {bound:g}", "met": meets(measured.value, relation, bound)}
        if measured.per_engine is not None:
            rows[name]["per_engine"] = {engine: {"value": value, "met": meets(value, relation, bound)}
                                        for engine, value in measured.per_engine.items()}
    return rows


def meets(value: float | None, relation: str, bound: float) -> bool | None:
    return None if value is None else COMPARE[relation](float(value), bound)


# ---- in-process engines ----

def engine_targets(engines: dict[str, dict]) -> dict[str, dict]:
    """The engine targets from `engines` ({name: result}). Each engine of ours that ran (never our baselines;
    only the quantized ones for the batch-1 target, only ours-fp32 for its roofline) is compared with the
    peer's best number in the run: the faster of the HF engines at --concurrency, llama-cpp-python for batch
    1 and TTFT. `by` names the best of ours, `versus` the peer."""
    def present(names, key) -> dict[str, float]:
        return {n: engines[n][key] for n in names if n in engines and engines[n][key] is not None}

    def versus_peer(key: str, mine: tuple[str, ...], peers: tuple[str, ...], lower_is_better=False) -> Measured:
        ours, theirs = present(mine, key), present(peers, key)
        peer = (min if lower_is_better else max)(theirs, key=theirs.get) if theirs else None
        ranked = sorted(ours, key=ours.get, reverse=not lower_is_better)
        per_engine = {name: quotient(ours[name], theirs.get(peer)) for name in ranked}
        by = ranked[0] if ranked else None
        return Measured(per_engine.get(by), by, peer or " or ".join(peers), per_engine)

    roofline = present(["ours-fp32"], "fraction_of_roofline")
    return target_rows("engine", {
        "concurrent_vs_hf": versus_peer("output_tok_s_concurrent", OURS_MODES, HF_ENGINES),
        "quantized_batch1_vs_llama_cpp_python": versus_peer("decode_tok_s_batch1", QUANTIZED, (LLAMA_CPP_PYTHON,)),
        "fp32_fraction_of_roofline": Measured(roofline.get("ours-fp32"), "ours-fp32" if roofline else None,
                                              "its roofline", roofline),
        "ttft_vs_llama_cpp_python": versus_peer("ttft_ms", OURS_MODES, (LLAMA_CPP_PYTHON,), lower_is_better=True),
    })


def engine_table(report: dict) -> Table:
    table = Table(title=f"In-process engines, {report['config']['threads']} threads "
                        f"(roofline: {report['read_bandwidth_gb_s']:.1f} GB/s, {report['bandwidth_source']})")
    level = report["config"]["concurrency"]
    for header in ("engine", "arithmetic", "TTFT ms", "b1 tok/s", f"c{level} tok/s", "RSS MB", "roofline",
                   f"c{level} ceiling"):
        table.add_column(header, justify="left" if header in ("engine", "arithmetic") else "right")
    for name, result in report["engines"].items():
        ceiling = result["fraction_of_ceiling_concurrent"]
        table.add_row(name, result["arithmetic"], fmt(result["ttft_ms"]), fmt(result["decode_tok_s_batch1"]),
                      fmt(result["output_tok_s_concurrent"]), fmt(result["peak_rss_mb"]),
                      f"{result['fraction_of_roofline']:.0%}", "-" if ceiling is None else f"{ceiling:.0%}")
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
    llama_server_tput = servers.get(LLAMA_SERVER, {}).get(TARGET_LEVEL, {}).get("output_throughput")
    targets = target_rows("servers", {
        "output_throughput_vs_llama_server_c16": Measured(at_target.get("output_throughput"), ours, LLAMA_SERVER),
        "offline_vs_llama_server_c16": Measured(quotient(offline_tput.get(TARGET_LEVEL), llama_server_tput),
                                                ours, LLAMA_SERVER),
        "median_ttft_vs_llama_server_c16": Measured(at_target.get("median_ttft_ms"), ours, LLAMA_SERVER),
        "server_overhead_pct_c16": Measured(overhead.get(f"c{TARGET_LEVEL}"), ours, "the offline engine"),
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
    """One line per target: its bound and peer, each engine of ours measured (engine benchmark) with its own
    verdict, then the best of them."""
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    verdicts = {True: "met", False: "NOT met", None: "not measured"}
    lines = []
    for name, target in targets.items():
        head = f"target {name} ({target['bound']}, vs {target['versus']})"
        best = f"{number(target['value'])}" + (f" by {target['by']}" if target["by"] else "")
        per_engine = target.get("per_engine") or {}
        modes = "".join(f"{engine} {number(row['value'])} {verdicts[row['met']]}, "
                        for engine, row in per_engine.items())
        lines.append(f"{head}: {modes}best {best} -> {verdicts[target['met']]} ({target['what']})")
    return lines

