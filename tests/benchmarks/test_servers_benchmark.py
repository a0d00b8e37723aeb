"""benchmarks.servers end to end: on the tiny model (ours + the HF baseline; a missing peer is skipped or
fatal), and against a real llama-server on SmolLM2 (the peer path CI runs: a few prompts, a few tokens)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.servers import main

OUTPUT_LEN = 8


def servers_args(tmp_path, *extra: str) -> list[str]:
    return ["--input-len", "8", "--output-len", str(OUTPUT_LEN), "--warmup", "1",
            "--output", str(tmp_path / "out" / "servers.json"), *extra]


def tiny_args(tiny_engine_dir, tiny_hf_dir, tmp_path, *extra: str) -> list[str]:
    gguf = tmp_path / "unused.gguf"  # llama-server is skipped, so nothing reads it
    gguf.write_bytes(b"")
    return servers_args(tmp_path, "--servers", "ours,hf-transformers,llama-server", "--concurrency", "1,2",
                        "--num-prompts", "4", "--threads", "1", "--engine-dir", str(tiny_engine_dir),
                        "--hf-model", str(tiny_hf_dir), "--gguf", str(gguf), *extra)


@pytest.fixture
def no_peers(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path / "no-peers"))


@pytest.mark.timeout(180)
def test_servers_writes_json_ratios_and_plots(tiny_engine_dir, tiny_hf_dir, tmp_path, no_peers, monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # outside CI a missing peer is skipped, not fatal
    result = CliRunner().invoke(main, tiny_args(tiny_engine_dir, tiny_hf_dir, tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    document = json.loads((out / "servers.json").read_text())
    assert "scripts/build-peers.sh llama-server" in document["skipped"]["llama-server"]
    assert "SKIPPED llama-server" in result.output
    assert document["ours"] == "ours-fp32" and "fp32" in document["arithmetic"]["ours-fp32"]
    assert document["machine"]["cpu"]["flags"]
    runs = {(run["endpoint"], run["concurrency"]): run for run in document["runs"]}
    assert sorted(runs) == [("hf-transformers", 1), ("hf-transformers", 2), ("ours-fp32", 1), ("ours-fp32", 2)]
    for run in runs.values():
        assert run["metrics"]["completed"] == 4 and run["metrics"]["errors"] == {}
        assert run["mean_output_tokens"] == OUTPUT_LEN and run["honoured_ignore_eos"] is True
        assert run["tokens_from"] == "usage"
    for run in runs.values():  # random byte-level tokens: a chunk may wait for the rest of a UTF-8 character
        metrics = run["metrics"]
        assert 0 < metrics["total_content_chunks"] <= metrics["total_output_tokens"] == 4 * OUTPUT_LEN
        assert run["chunks_match_usage"] is (metrics["chunk_usage_mismatches"] == 0)
    offline = {record["concurrency"]: record for record in document["offline"]}
    assert [offline[c]["total_output_tokens"] for c in (1, 2)] == [4 * OUTPUT_LEN] * 2
    for level in (1, 2):
        ours, hf = runs["ours-fp32", level]["metrics"], runs["hf-transformers", level]["metrics"]
        cell = document["ratios"]["ours-fp32/hf-transformers"][f"c{level}"]
        assert cell["output_throughput"] == pytest.approx(ours["output_throughput"] / hf["output_throughput"])
        assert cell["median_ttft_ms"] == pytest.approx(ours["median_ttft_ms"] / hf["median_ttft_ms"])
        overhead = 100 * (1 - ours["output_throughput"] / offline[level]["output_throughput"])
        assert document["server_overhead_pct"][f"c{level}"] == pytest.approx(overhead)
    assert "ours-fp32/llama-server" not in document["ratios"]
    assert document["targets"]["output_throughput_vs_llama_server_c16"]["met"] is None
    for name in ("servers-vs-concurrency.png", "servers-throughput.png", "servers-latency.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.timeout(180)
def test_required_peer_missing_fails_before_running(tiny_engine_dir, tiny_hf_dir, tmp_path, no_peers):
    result = CliRunner().invoke(main, tiny_args(tiny_engine_dir, tiny_hf_dir, tmp_path, "--require-peers"))
    assert result.exit_code == 2
    assert "Error: peers not built" in result.output and "scripts/build-peers.sh llama-server" in result.output
    assert not (tmp_path / "out" / "servers.json").exists()


def test_bad_lists_are_one_line_errors(tmp_path):
    for extra, message in ((["--servers", "ours,vllm"], "bad --servers 'ours,vllm'; choose from"),
                           (["--concurrency", "1,x"], "bad --concurrency '1,x'; give positive integers"),
                           (["--engine-dir", str(tmp_path)], "is not an engine directory")):
        result = CliRunner().invoke(main, servers_args(tmp_path, *extra))
        assert result.exit_code == 2 and result.output.startswith("Error: ") and message in result.output


@pytest.mark.model
@pytest.mark.timeout(420)
def test_ours_against_a_real_llama_server(llama_server_peer, smollm2_gguf, tmp_path):
    """The peer path on a real llama.cpp server: the same client and prompts, exact tokens from usage, one
    content chunk per token, the ratios, and the build record of the llama-server that ran."""
    result = CliRunner().invoke(main, servers_args(tmp_path, "--servers", "ours,llama-server", "--concurrency", "2",
                                                   "--num-prompts", "2", "--no-offline", "--gguf", str(smollm2_gguf),
                                                   "--require-peers"))
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "servers.json").read_text())
    assert document["skipped"] == {}
    assert document["arithmetic"]["llama-server"].startswith("Q4_1 weights")
    assert "weight-only" in document["arithmetic"]["ours-int8"]
    for run in document["runs"]:
        assert run["metrics"]["completed"] == 2 and run["metrics"]["errors"] == {}, run
        assert run["tokens_from"] == "usage" and run["mean_output_tokens"] == OUTPUT_LEN, run
        assert run["chunks_match_usage"] is True, run
    assert [run["endpoint"] for run in document["runs"]] == ["ours-int8", "llama-server"]
    assert document["ratios"]["ours-int8/llama-server"]["c2"]["output_throughput"] > 0
    build = document["machine"]["peer_builds"]["llama-server"]
    assert build["cmake_flags"].startswith("-DGGML_NATIVE=OFF") and "-DGGML_AMX_INT8=OFF" in build["cmake_flags"]


@pytest.mark.model
@pytest.mark.timeout(300)
def test_llama_cpp_python_server_without_usage_has_its_chunks_counted(llama_cpp_python_peer, smollm2_gguf,
                                                                       tmp_path):
    """llama-cpp-python's server sends no usage: the run says its tokens were counted from content chunks."""
    result = CliRunner().invoke(main, servers_args(tmp_path, "--servers", "llama-cpp-python", "--concurrency", "1",
                                                   "--num-prompts", "2", "--gguf", str(smollm2_gguf)))
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "servers.json").read_text())
    (run,) = document["runs"]
    assert run["endpoint"] == "llama-cpp-python" and run["metrics"]["completed"] == 2, run
    assert run["tokens_from"] == "content chunks" and run["chunks_match_usage"] is None
    assert run["metrics"]["total_output_tokens"] == run["metrics"]["total_content_chunks"] > 0
    assert document["ours"] is None and document["ratios"] == {}


def test_signal_handlers_come_back_after_a_run():
    import signal

    from benchmarks.servers import exit_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    with exit_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_server_targets_name_the_served_mode_and_compare_the_offline_engine_with_llama_server():
    from benchmarks.report import server_ratios, targets_lines

    def run(endpoint: str, level: int, tok_s: float, ttft_ms: float) -> dict:
        return {"endpoint": endpoint, "concurrency": level,
                "metrics": {"output_throughput": tok_s, "median_ttft_ms": ttft_ms}}
    runs = [run("ours-w8a8", 1, 90, 20), run("ours-w8a8", 16, 380, 60),
            run("llama-server", 1, 80, 30), run("llama-server", 16, 200, 150)]
    offline = [{"concurrency": 1, "output_throughput": 95}, {"concurrency": 16, "output_throughput": 480}]
    targets = server_ratios(runs, offline, "ours-w8a8")["targets"]
    assert all(target["by"] == "ours-w8a8" for target in targets.values())
    assert targets["offline_vs_llama_server_c16"] == {**targets["offline_vs_llama_server_c16"],
                                                      "value": pytest.approx(2.4), "bound": ">= 2.5", "met": False,
                                                      "versus": "llama-server"}
    assert targets["output_throughput_vs_llama_server_c16"]["value"] == pytest.approx(1.9)
    assert targets["median_ttft_vs_llama_server_c16"]["met"] is True  # 60 / 150 = 0.4
    assert targets["server_overhead_pct_c16"]["value"] == pytest.approx(100 * (1 - 380 / 480))
    assert all("per_engine" not in target for target in targets.values())  # one run serves one mode
    line = next(line for line in targets_lines(targets) if "offline_vs_llama_server_c16" in line)
    assert line.startswith("target offline_vs_llama_server_c16 (>= 2.5, vs llama-server): best 2.40 by ours-w8a8 "
                           "-> NOT met")
    assert server_ratios(runs, [offline[0]], "ours-w8a8")["targets"]["offline_vs_llama_server_c16"]["met"] is None
