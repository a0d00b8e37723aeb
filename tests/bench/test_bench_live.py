"""The bench against the real server on 127.0.0.1: token counts match the server, metrics are consistent."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from inference.bench.cli import bench
from inference.bench.client import Endpoint, RequestOptions
from inference.bench.dataset import prompt_stream
from inference.bench.load import Load, benchmark_endpoint
from live_server import ROOT, free_port, metric_value

pytestmark = pytest.mark.timeout(300)
OUTPUT_LEN = 6


def run(endpoint: Endpoint, loads: list[Load], warmup: int = 1, options: RequestOptions | None = None):
    prompts = prompt_stream(input_len=8, output_len=OUTPUT_LEN, seed=3)
    return asyncio.run(benchmark_endpoint(endpoint, prompts, loads, options or RequestOptions(), warmup,
                                          goodput_slos_ms={"ttft": 60_000}))


def assert_consistent(metrics: dict, num_prompts: int) -> None:
    assert metrics["completed"] == num_prompts and metrics["errors"] == {}
    duration = metrics["duration"]
    assert metrics["output_throughput"] == pytest.approx(metrics["total_output_tokens"] / duration)
    assert metrics["total_token_throughput"] == pytest.approx(
        (metrics["total_input_tokens"] + metrics["total_output_tokens"]) / duration)
    assert metrics["request_throughput"] == pytest.approx(num_prompts / duration)
    assert metrics["request_goodput"] == pytest.approx(metrics["request_throughput"])
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < metrics[f"p50_{name}_ms"] <= metrics[f"p90_{name}_ms"] <= metrics[f"p99_{name}_ms"]
    assert metrics["median_ttft_ms"] <= metrics["median_e2el_ms"]
    assert 0 < metrics["max_gap_s"] <= duration


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_concurrency_sweep_matches_server_token_counts(bench_server, api):
    counter = lambda: metric_value(bench_server.url, "vllm:generation_tokens_total")  # noqa: E731
    before = counter()
    loads = [Load(concurrency=1, num_prompts=3), Load(concurrency=3, num_prompts=6)]
    outcomes = run(Endpoint("ours", bench_server.url, api=api), loads)
    for outcome, load in zip(outcomes, loads):
        assert_consistent(outcome.metrics, load.num_prompts)
        assert all(result.output_tokens == OUTPUT_LEN for result in outcome.results)  # ignore_eos honoured
        assert all(result.prompt_tokens > 0 for result in outcome.results)  # from usage, not the estimate
    bench_tokens = sum(outcome.metrics["total_output_tokens"] for outcome in outcomes)
    assert bench_tokens == 9 * OUTPUT_LEN
    assert counter() - before == bench_tokens + OUTPUT_LEN  # + the one warm-up request


def test_poisson_rate_mode(bench_server):
    (outcome,) = run(Endpoint("ours", bench_server.url), [Load(request_rate=20.0, num_prompts=5, seed=1)], warmup=0)
    assert_consistent(outcome.metrics, 5)


def test_unreachable_endpoint_counts_connection_errors_and_retries():
    endpoint = Endpoint("gone", f"http://127.0.0.1:{free_port()}", model="tiny")
    (outcome,) = run(endpoint, [Load(concurrency=2, num_prompts=4)], warmup=0, options=RequestOptions(retries=2))
    assert outcome.metrics["completed"] == 0
    assert outcome.metrics["errors"] == {"connection": 4}
    assert outcome.metrics["retries"] == 8


def test_cli_writes_json_and_plots_and_compares(bench_server, tmp_path):
    args = ["--endpoint", f"ours={bench_server.url}", "--concurrency", "1,2", "--num-prompts", "2", "--warmup", "0",
            "--input-len", "8", "--output-len", "4", "--goodput", "ttft:60000", "tpot:60000",
            "--result-dir", str(tmp_path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("bench-*.json")
    document = json.loads(path.read_text())
    assert [run["label"] for run in document["runs"]] == ["c1", "c2"]
    assert document["config"]["goodput_ms"] == {"ttft": 60000.0, "tpot": 60000.0}
    assert len(list(tmp_path.glob("bench-*.png"))) == 2
    compared = CliRunner().invoke(bench, ["--compare", str(path), str(path)])
    assert compared.exit_code == 0, compared.output
    assert "×1.00" in compared.output


def test_bench_never_imports_torch():
    code = ("import sys; import lab_tasks.commands.bench, inference.bench.cli, inference.bench.plots; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
