"""The front-cost benchmark's arithmetic: direct runs merged per node, medians over rounds, overheads against
direct, outage spread per drill method, the report's target verdict."""
from benchmarks import front_cost


def metrics(out_tps: float, ttft: float, failed: int = 0) -> dict:
    return {"completed": 16 - failed, "failed": failed, "request_throughput": out_tps / 32,
            "output_throughput": out_tps, "median_ttft_ms": ttft, "p99_ttft_ms": ttft * 2, "median_tpot_ms": 20.0,
            "median_itl_ms": 20.0}


def test_direct_runs_add_throughput_and_average_latency():
    merged = front_cost.merge_direct([metrics(50.0, 100.0), metrics(60.0, 120.0, failed=1)])
    assert merged["output_throughput"] == 110.0 and merged["failed"] == 1 and merged["median_ttft_ms"] == 110.0


def test_summary_takes_medians_and_overheads_against_direct():
    rounds = [{"direct": metrics(100.0, 100.0), "nginx": metrics(98.0, 104.0), "vip": metrics(97.0, 106.0)},
              {"direct": metrics(110.0, 90.0), "nginx": metrics(99.0, 300.0), "vip": metrics(96.0, 105.0)},
              {"direct": metrics(90.0, 110.0), "nginx": metrics(97.0, 102.0), "vip": metrics(95.0, 104.0)}]
    summary = front_cost.summarize(rounds)
    assert summary["direct"]["output_throughput"] == 100.0 and summary["nginx"]["median_ttft_ms"] == 104.0
    assert round(summary["nginx"]["throughput_overhead_pct"], 6) == 2.0
    assert round(summary["nginx"]["ttft_p50_overhead_pct"], 6) == 4.0
    assert "met" in front_cost.report({"summary": summary, "outages": {}})
    summary["nginx"]["ttft_p50_overhead_pct"] = 7.0
    assert "MISSED" in front_cost.report({"summary": summary, "outages": {}})


def test_outage_stats_count_failures_to_recover_and_skip_errors():
    runs = [{"outage_s": 0.8, "recovered": True}, {"outage_s": 1.4, "recovered": False}, {"error": "ssh"}]
    stats = front_cost.outage_stats(runs)
    assert (stats["count"], stats["median_s"], stats["max_s"], stats["not_recovered"]) == (2, 1.1, 1.4, 2)
    assert front_cost.outage_stats([{"error": "x"}]) == {"count": 0}


def test_plot_lands_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = front_cost.summarize([{"direct": metrics(100.0, 100.0), "nginx": metrics(98.0, 104.0),
                                     "vip": metrics(97.0, 106.0)}])
    outages = {"stop-nginx": front_cost.outage_stats([{"outage_s": 0.5, "recovered": True}])}
    front_cost.plot({"summary": summary, "outages": outages}, tmp_path / "front.png")
    assert [p.name for p in tmp_path.rglob("*.png")] == ["front.png"]
