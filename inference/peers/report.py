"""The comparison's numbers: ratios of our server to each peer, server overhead, a table and two plots."""

from pathlib import Path

from rich.table import Table

from inference.bench.plots import by_endpoint, plt, save
from inference.bench.report import fmt

OURS = "opslab"
PEERS = ("llama-server", "llama-cpp-python", "hf")
TARGET_LEVEL = 16  # issue 7's targets are stated at concurrency 16


def by_server_and_level(runs: list[dict]) -> dict[str, dict[int, dict]]:
    """{server: {concurrency: metrics}}."""
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        table.setdefault(run["endpoint"], {})[run["concurrency"]] = run["metrics"]
    return table


def quotient(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def metric(series: dict[int, dict], level: int, key: str) -> float | None:
    return series.get(level, {}).get(key)


def peer_ratios(ours: dict[int, dict], peer: dict[int, dict]) -> dict[str, dict]:
    """Per level: our output tok/s ÷ the peer's, and our p50 TTFT ÷ the peer's (lower is better for TTFT)."""
    def ours_over_peer(level: int, key: str) -> float | None:
        return quotient(metric(ours, level, key), metric(peer, level, key))

    return {f"c{level}": {"output_throughput": ours_over_peer(level, "output_throughput"),
                          "median_ttft": ours_over_peer(level, "median_ttft_ms")} for level in sorted(ours)}


def server_overhead(ours: dict[int, dict], offline: list[dict]) -> dict[str, float | None]:
    """Per level: % of the offline engine's output tok/s that serving over HTTP loses (negative: server faster)."""
    offline_tput = {record["concurrency"]: record["output_throughput"] for record in offline}
    overhead = {}
    for level in sorted(ours):
        share = quotient(metric(ours, level, "output_throughput"), offline_tput.get(level))
        overhead[f"c{level}"] = None if share is None else 100.0 * (1.0 - share)
    return overhead


def compute_ratios(runs: list[dict], offline: list[dict]) -> dict:
    """Ours vs every peer that ran, server overhead, and issue 7's three targets at concurrency 16."""
    servers = by_server_and_level(runs)
    ours = servers.get(OURS, {})
    ratios = {f"{OURS}/{peer}": peer_ratios(ours, servers[peer]) for peer in PEERS if peer in servers}
    overhead = server_overhead(ours, offline)
    versus_llama = ratios.get(f"{OURS}/llama-server", {}).get(f"c{TARGET_LEVEL}", {})
    targets = {
        "output_throughput_vs_llama_server_c16": target(versus_llama.get("output_throughput"), ">=", 2.0),
        "median_ttft_vs_llama_server_c16": target(versus_llama.get("median_ttft"), "<=", 0.5),
        "server_overhead_pct_c16": target(overhead.get(f"c{TARGET_LEVEL}"), "<", 10.0),
    }
    return {"ratios": ratios, "server_overhead_pct": overhead, "targets": targets}


def target(value: float | None, relation: str, bound: float) -> dict:
    """{"value", "target", "met"}; met is None when the value could not be measured."""
    checks = {">=": value is not None and value >= bound, "<=": value is not None and value <= bound,
              "<": value is not None and value < bound}
    return {"value": value, "target": f"{relation} {bound:g}", "met": checks[relation] if value is not None else None}


def ratio_table(document: dict) -> Table:
    """One row per concurrency: our output tok/s and p50 TTFT against each peer, and server overhead."""
    servers = by_server_and_level(document["runs"])
    ours = servers.get(OURS, {})
    peers = [peer for peer in PEERS if peer in servers]
    table = Table(title="opslab vs peers (ratios = ours ÷ peer; TTFT: lower is better)")
    for header in ("conc", "ours tok/s", *(f"÷{p} tok/s" for p in peers), "ours TTFT p50 ms",
                   *(f"÷{p} TTFT" for p in peers), "offline tok/s", "overhead %"):
        table.add_column(header, justify="right")
    offline = {record["concurrency"]: record["output_throughput"] for record in document["offline"]}
    for level in sorted(ours):
        label = f"c{level}"
        cells = [document["ratios"][f"{OURS}/{p}"][label] for p in peers]
        table.add_row(str(level), fmt(metric(ours, level, "output_throughput")),
                      *(fmt(cell["output_throughput"]) for cell in cells), fmt(metric(ours, level, "median_ttft_ms")),
                      *(fmt(cell["median_ttft"]) for cell in cells), fmt(offline.get(level)),
                      fmt(document["server_overhead_pct"].get(label)))
    return table


def plot_comparison(document: dict, path: Path) -> Path:
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
