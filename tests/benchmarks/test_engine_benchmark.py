"""benchmarks.engine runs end to end on a tiny checkpoint (no timing assertions: speed claims belong in its
JSON), its targets pick the right engines, its roofline never passes 100 %, and the HF baseline refuses a
checkpoint that does not fill its weights."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny_llama import hf_tiny

from benchmarks import engine as benchmark
from benchmarks.hf_engine import check_keys
from benchmarks.report import engine_targets
from inference.tokenizer import Tokenizer

OURS_AND_HF = ["ours-fp32", "ours-fp32-torch", "ours-int8", "ours-int8-per-op", "ours-int4", "ours-w8a8",
               "hf-transformers"]


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """benchmark.run_benchmark on a tiny HF checkpoint, in this process, with the engine cache and peers in tmp."""
    hf_tiny(vocab_size=258).save_pretrained(tmp_path / "hf")
    Tokenizer.byte_level().save(tmp_path / "hf")
    monkeypatch.setenv("OPSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path / "no-peers"))
    monkeypatch.setattr(benchmark, "run_isolated", lambda name, config: benchmark.RUNNERS[name](config))
    config = benchmark.BenchConfig(str(tmp_path / "hf"), max_tokens=3, concurrency=2, prompt_tokens=6, threads=1,
                                   repeats=1)

    def run(engines: list[str], require_peers: bool = False) -> dict:
        return benchmark.run_benchmark(config, engines, require_peers, tmp_path / "out")
    return run


def test_benchmark_reports_every_metric_for_every_engine(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_CPU_KERNELS", "1")
    report = tiny_run(OURS_AND_HF)
    assert list(report["engines"]) == OURS_AND_HF
    for name in OURS_AND_HF:
        result = report["engines"][name]
        assert result["decode_tok_s_batch1"] > 0 and result["output_tok_s_concurrent"] > 0 and result["ttft_ms"] > 0
        assert 0 < result["fraction_of_roofline"] <= 1 + 1e-9  # the bandwidth is never below what a step moved
    assert report["engines"]["ours-fp32"]["host_overhead_ms_per_step"] >= 0
    assert "weight-only" in report["engines"]["ours-int8"]["arithmetic"]
    assert "w8a8" in report["engines"]["ours-w8a8"]["arithmetic"]
    fp32_bytes = report["engines"]["ours-fp32"]["weight_bytes_per_token"]
    assert report["engines"]["hf-transformers"]["weight_bytes_per_token"] == fp32_bytes
    assert report["engines"]["ours-int4"]["weight_bytes_per_token"] < report["engines"]["ours-int8"][
        "weight_bytes_per_token"] < fp32_bytes
    assert report["engines"]["ours-w8a8"]["weight_bytes_per_token"] == report["engines"]["ours-int8"][
        "weight_bytes_per_token"]
    assert report["read_bandwidth_gb_s"] >= max(report["demonstrated_gb_s"].values())
    assert report["machine"]["cpu"]["model"] and report["machine"]["cpu"]["flags"]
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == report
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 0
    targets = report["targets"]
    assert targets["concurrent_vs_hf"]["met"] is not None and targets["concurrent_vs_hf"]["by"].startswith("ours-")
    assert targets["quantized_batch1_vs_llama_cpp_python"]["met"] is None


def test_missing_peers_are_skipped_and_recorded_or_fail_when_required(tiny_run):
    report = tiny_run(["ours-fp32", "llama-cpp-python"])
    assert list(report["engines"]) == ["ours-fp32"]
    assert "scripts/build-peers.sh llama-cpp-python" in report["skipped"]["llama-cpp-python"]
    with pytest.raises(benchmark.BenchmarkError, match="llama-cpp-python's server is not installed"):
        tiny_run(["ours-fp32", "llama-cpp-python"], require_peers=True)


def test_cli_refuses_unknown_engines_and_missing_peers_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    for engines, message in (("ours-fp32,llama-server", "unknown engine llama-server; choose from"),
                             ("llama-cpp-python", "llama-cpp-python's server is not installed")):
        result = CliRunner().invoke(benchmark.main, ["--gguf", str(tmp_path), "--engines", engines])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and message in result.output


def test_targets_compare_the_best_of_ours_with_the_peers():
    def engine(b1, concurrent, ttft, roofline=0.5):
        return {"decode_tok_s_batch1": b1, "output_tok_s_concurrent": concurrent, "ttft_ms": ttft,
                "fraction_of_roofline": roofline}
    targets = engine_targets({
        "ours-fp32": engine(30, 200, 150, roofline=0.65), "ours-int8": engine(120, 310, 120),
        "ours-w8a8": engine(110, 330, 125),
        "ours-fp32-torch": engine(20, 900, 10), "ours-int8-per-op": engine(200, 900, 10),  # baselines never count
        "hf-transformers": engine(13, 66, 222), "llama-cpp-python": engine(117, None, 239)})
    assert targets["concurrent_vs_hf"]["value"] == pytest.approx(330 / 66)
    assert targets["concurrent_vs_hf"]["by"] == "ours-w8a8" and targets["concurrent_vs_hf"]["met"] is True
    assert targets["quantized_batch1_vs_llama_cpp_python"]["value"] == pytest.approx(120 / 117)
    assert targets["quantized_batch1_vs_llama_cpp_python"]["by"] == "ours-int8"
    assert targets["fp32_fraction_of_roofline"]["met"] is True
    assert targets["fp32_fraction_of_roofline"]["by"] == "ours-fp32"
    assert targets["ttft_vs_llama_cpp_python"]["value"] == pytest.approx(120 / 239)


def test_roofline_bandwidth_is_at_least_what_a_decode_step_moved():
    config = benchmark.BenchConfig("unused.gguf")
    fast = benchmark.EngineResult("ours-int8", 10.0, 200.0, 400.0, None, weight_bytes_per_token=150_000_000)
    report = benchmark.summarize([fast], probe_gb_s=20.0, config=config, skipped={})
    assert report["read_bandwidth_gb_s"] == pytest.approx(30.0)  # 200 tok/s x 150 MB, above the 20 GB/s probe
    assert report["engines"]["ours-int8"]["fraction_of_roofline"] == pytest.approx(1.0)
    assert "probe read 20.0" in report["bandwidth_source"]


def test_hf_baseline_refuses_missing_or_unexpected_weights():
    check_keys([], [], tied=False, source="ok")
    check_keys(["lm_head.weight"], [], tied=True, source="tied head")
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\]"):
        check_keys(["model.norm.weight"], [], tied=False, source="x")
    with pytest.raises(ValueError, match="unexpected"):
        check_keys([], ["model.layers.0.extra"], tied=False, source="x")
    with pytest.raises(ValueError, match="missing"):
        check_keys(["lm_head.weight"], [], tied=False, source="untied")


def test_prompts_are_unique_from_the_first_token():
    prompts = benchmark.make_prompts(16, 64, 49152)
    assert len({p[0] for p in prompts}) == 16 and all(len(p) == 64 for p in prompts)


@pytest.mark.model
@pytest.mark.timeout(300)
def test_llama_cpp_python_in_process_against_ours(llama_cpp_python_peer, smollm2_gguf, tmp_path):
    """The in-process peer path on the real model: exact token counts, a batch-1 number, the build record."""
    config = benchmark.BenchConfig(str(smollm2_gguf), max_tokens=8, concurrency=1, prompt_tokens=8, threads=2,
                                   repeats=1)
    report = benchmark.run_benchmark(config, ["llama-cpp-python"], True, tmp_path)
    result = report["engines"]["llama-cpp-python"]
    assert result["decode_tok_s_batch1"] > 0 and result["output_tok_s_concurrent"] is None
    assert result["arithmetic"].startswith("Q4_1 weights")
    assert report["machine"]["peer_builds"]["llama-cpp-python"]["cmake_flags"].startswith("-DGGML_NATIVE=OFF")
