"""benchmarks.engine runs end to end on a tiny checkpoint (no timing assertions: speed claims belong in its
JSON), its targets compare each mode of ours with the fastest peer in the run, its roofline never passes
100 %, its ceiling at --concurrency is the roofline times the batch, and the HF baseline refuses a checkpoint
that does not fill its weights."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console
from tiny_llama import hf_tiny

from benchmarks import engine as benchmark
from benchmarks.hf_engine import check_keys
from benchmarks.report import engine_table, engine_targets, targets_lines
from inference import kernels
from inference.tokenizer import Tokenizer

OURS_AND_HF = ["ours-fp32", "ours-fp32-torch", "ours-int8", "ours-int8-per-op", "ours-int4", "ours-w8a8",
               "hf-transformers", "hf-transformers-bf16"]


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
        assert result["ceiling_tok_s_concurrent"] == pytest.approx(2 * result["roofline_tok_s_batch1"])
        assert result["fraction_of_ceiling_concurrent"] > 0
    assert report["engines"]["ours-fp32"]["host_overhead_ms_per_step"] >= 0
    assert "weight-only" in report["engines"]["ours-int8"]["arithmetic"]
    assert "w8a8" in report["engines"]["ours-w8a8"]["arithmetic"]
    head_in_bf16 = bool(report["kernels"]["path"]) and kernels.PATHS[report["kernels"]["path"]].bf16_products
    for name in ("ours-int8", "ours-w8a8", "ours-int4", "ours-fp32"):  # the fp32 head stays float32
        assert ("int8 head in bf16 products" in report["engines"][name]["arithmetic"]) == (
            head_in_bf16 and name != "ours-fp32"), name
    fp32_bytes = report["engines"]["ours-fp32"]["weight_bytes_per_token"]
    assert report["engines"]["hf-transformers"]["weight_bytes_per_token"] == fp32_bytes
    assert report["engines"]["hf-transformers-bf16"]["weight_bytes_per_token"] == fp32_bytes // 2
    assert report["engines"]["hf-transformers-bf16"]["arithmetic"].startswith("bf16 weights")
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
    assert targets["concurrent_vs_hf"]["versus"] in ("hf-transformers", "hf-transformers-bf16")
    assert set(targets["concurrent_vs_hf"]["per_engine"]) == {"ours-fp32", "ours-int8", "ours-int4", "ours-w8a8"}
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


def engine(b1, concurrent, ttft, roofline=0.5):
    return {"decode_tok_s_batch1": b1, "output_tok_s_concurrent": concurrent, "ttft_ms": ttft,
            "fraction_of_roofline": roofline}


def test_targets_compare_each_mode_of_ours_with_the_fastest_peer():
    targets = engine_targets({
        "ours-fp32": engine(30, 200, 150, roofline=0.65), "ours-int8": engine(120, 310, 120),
        "ours-w8a8": engine(180, 330, 125),
        "ours-fp32-torch": engine(20, 900, 10), "ours-int8-per-op": engine(200, 900, 10),  # baselines never count
        "hf-transformers": engine(13, 66, 222), "hf-transformers-bf16": engine(15, 100, 200),
        "llama-cpp-python": engine(117, None, 239)})
    concurrent = targets["concurrent_vs_hf"]
    assert concurrent["versus"] == "hf-transformers-bf16"  # the faster HF engine at --concurrency
    assert concurrent["value"] == pytest.approx(3.3) and concurrent["by"] == "ours-w8a8" and concurrent["met"] is True
    assert list(concurrent["per_engine"]) == ["ours-w8a8", "ours-int8", "ours-fp32"]  # best first, no baselines
    assert concurrent["per_engine"]["ours-int8"] == {"value": pytest.approx(3.1), "met": True}
    assert concurrent["per_engine"]["ours-fp32"] == {"value": pytest.approx(2.0), "met": False}
    batch1 = targets["quantized_batch1_vs_llama_cpp_python"]
    assert batch1["bound"] == ">= 1.5" and batch1["versus"] == "llama-cpp-python"
    assert list(batch1["per_engine"]) == ["ours-w8a8", "ours-int8"]  # quantized modes only
    assert batch1["per_engine"]["ours-int8"] == {"value": pytest.approx(120 / 117), "met": False}  # met at 1.0
    assert batch1["per_engine"]["ours-w8a8"] == {"value": pytest.approx(180 / 117), "met": True}
    assert batch1["by"] == "ours-w8a8" and batch1["met"] is True
    roofline = targets["fp32_fraction_of_roofline"]
    assert roofline["met"] is True and roofline["by"] == "ours-fp32" and list(roofline["per_engine"]) == ["ours-fp32"]
    ttft = targets["ttft_vs_llama_cpp_python"]
    assert list(ttft["per_engine"]) == ["ours-int8", "ours-w8a8", "ours-fp32"]  # lowest first
    assert ttft["value"] == pytest.approx(120 / 239) and ttft["by"] == "ours-int8"
    assert ttft["per_engine"]["ours-fp32"] == {"value": pytest.approx(150 / 239), "met": True}


def test_targets_take_hf_fp32_when_it_is_the_faster_and_say_what_is_missing():
    targets = engine_targets({"ours-int8": engine(120, 310, 120), "ours-int4": engine(100, 150, 130),
                              "hf-transformers": engine(13, 100, 222), "hf-transformers-bf16": engine(15, 90, 200)})
    assert targets["concurrent_vs_hf"]["versus"] == "hf-transformers"
    assert targets["concurrent_vs_hf"]["per_engine"]["ours-int4"] == {"value": pytest.approx(1.5), "met": False}
    batch1 = targets["quantized_batch1_vs_llama_cpp_python"]  # no llama-cpp-python in the run
    assert batch1["value"] is None and batch1["met"] is None and batch1["by"] == "ours-int8"
    assert batch1["per_engine"] == {"ours-int8": {"value": None, "met": None}, "ours-int4": {"value": None,
                                                                                            "met": None}}
    assert targets["fp32_fraction_of_roofline"]["per_engine"] == {}


def test_target_lines_name_the_peer_and_every_mode_with_its_verdict():
    targets = engine_targets({"ours-int8": engine(120, 186, 120), "ours-w8a8": engine(110, 242, 125),
                              "hf-transformers": engine(13, 66, 222), "hf-transformers-bf16": engine(15, 100, 200)})
    lines = targets_lines(targets)
    assert lines[0].startswith("target concurrent_vs_hf (>= 3, vs hf-transformers-bf16): ours-w8a8 2.42 NOT met, "
                               "ours-int8 1.86 NOT met, best 2.42 by ours-w8a8 -> NOT met (")
    assert lines[1].startswith("target quantized_batch1_vs_llama_cpp_python (>= 1.5, vs llama-cpp-python): "
                               "ours-int8 n/a not measured, ours-w8a8 n/a not measured, best n/a by ours-int8 -> "
                               "not measured")


def test_roofline_bandwidth_is_at_least_what_a_decode_step_moved():
    config = benchmark.BenchConfig("unused.gguf")
    fast = benchmark.EngineResult("ours-int8", 10.0, 200.0, 400.0, None, weight_bytes_per_token=150_000_000)
    report = benchmark.summarize([fast], probe_gb_s=20.0, config=config, skipped={})
    assert report["read_bandwidth_gb_s"] == pytest.approx(30.0)  # 200 tok/s x 150 MB, above the 20 GB/s probe
    assert report["engines"]["ours-int8"]["fraction_of_roofline"] == pytest.approx(1.0)
    assert "probe read 20.0" in report["bandwidth_source"]


def test_ceiling_at_concurrency_is_bandwidth_over_weight_bytes_times_the_batch():
    config = benchmark.BenchConfig("unused.gguf", concurrency=16)
    int8 = benchmark.EngineResult("ours-int8", 10.0, 100.0, 400.0, None, weight_bytes_per_token=135_000_000)
    one_at_a_time = benchmark.EngineResult("llama-cpp-python", 12.0, 90.0, None, None,
                                           weight_bytes_per_token=90_000_000)
    report = benchmark.summarize([int8, one_at_a_time], probe_gb_s=20.0, config=config, skipped={})
    result = report["engines"]["ours-int8"]
    assert result["ceiling_tok_s_concurrent"] == pytest.approx(20e9 / 135e6 * 16)  # ~2370 tok/s
    assert result["fraction_of_ceiling_concurrent"] == pytest.approx(400 / (20e9 / 135e6 * 16))
    assert report["engines"]["llama-cpp-python"]["ceiling_tok_s_concurrent"] is None
    assert report["engines"]["llama-cpp-python"]["fraction_of_ceiling_concurrent"] is None
    console = Console(record=True, width=250)
    console.print(engine_table(report))
    text = console.export_text()
    assert "c16 ceiling" in text and "17%" in text  # 400 of ~2370 tok/s


def test_hf_bf16_runs_in_bf16_and_is_not_repeated_under_dtype_bfloat16():
    assert benchmark.hf_dtype("hf-transformers-bf16", "float32") == "bfloat16"
    assert benchmark.hf_dtype("hf-transformers-bf16", "float16") == "bfloat16"
    assert benchmark.hf_dtype("hf-transformers", "float16") == "float16"
    both = ["ours-int8", "hf-transformers", "hf-transformers-bf16"]
    assert benchmark.repeated_engines(both, "float32") == {}
    assert benchmark.repeated_engines(both, "float16") == {}
    assert "runs hf-transformers in bfloat16 already" in benchmark.repeated_engines(both, "bfloat16")[
        "hf-transformers-bf16"]
    assert benchmark.repeated_engines(["hf-transformers-bf16"], "bfloat16") == {}  # asked alone: it runs
    assert "hf-transformers-bf16" in benchmark.RUNNERS


def test_run_skips_the_repeated_hf_engine_without_failing_required_peers(tmp_path, monkeypatch):
    ran = []

    def fake_run(name, config):
        ran.append((name, config.dtype))
        return benchmark.EngineResult(name, 10.0, 50.0, 100.0, None, weight_bytes_per_token=1_000_000)
    monkeypatch.setattr(benchmark, "run_isolated", fake_run)
    monkeypatch.setattr(benchmark, "read_bandwidth_gb_s", lambda threads, device: 1.0)
    monkeypatch.setattr(benchmark, "gguf_weight_type", lambda path: None)
    config = benchmark.BenchConfig("unused.gguf", dtype="bfloat16")
    report = benchmark.run_benchmark(config, ["hf-transformers", "hf-transformers-bf16"], True, tmp_path)
    assert ran == [("hf-transformers", "bfloat16")]
    assert "already" in report["skipped"]["hf-transformers-bf16"]
    assert report["engines"]["hf-transformers"]["arithmetic"].startswith("bfloat16 weights")


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
