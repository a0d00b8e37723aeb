"""benchmark.py runs end to end on a tiny checkpoint (no timing assertions: speed claims belong in its JSON)."""
from __future__ import annotations

import json

import pytest
from tiny_llama import hf_tiny

from inference import benchmark
from inference.tokenizer import Tokenizer

OURS_AND_HF = ["ours-fp32", "ours-fp32-torch", "ours-int8", "ours-int8-per-op", "ours-int4", "ours-w8a8",
               "hf-transformers"]


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """benchmark.main on a tiny HF checkpoint, in this process, with the engine cache and peers dir in tmp."""
    hf_tiny(vocab_size=258).save_pretrained(tmp_path / "hf")
    Tokenizer.byte_level().save(tmp_path / "hf")
    monkeypatch.setenv("OPSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path / "no-peers"))
    monkeypatch.delenv("CI", raising=False)  # under CI=true a missing peer is an error (tested below)
    monkeypatch.setattr(benchmark, "run_isolated", lambda name, config: benchmark.RUNNERS[name](config))

    def run(*extra: str) -> dict:
        return benchmark.main(["--gguf", str(tmp_path / "hf"), "--max-tokens", "3", "--concurrency", "2",
                               "--prompt-tokens", "6", "--repeats", "1", "--threads", "1",
                               "--out", str(tmp_path / "out"), *extra])
    return run


def test_benchmark_reports_every_metric_for_every_engine(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_CPU_KERNELS", "1")
    report = tiny_run("--engines", *OURS_AND_HF)
    assert list(report["engines"]) == OURS_AND_HF
    for name in OURS_AND_HF:
        result = report["engines"][name]
        assert result["decode_tok_s_batch1"] > 0 and result["output_tok_s_concurrent"] > 0 and result["ttft_ms"] > 0
    assert report["engines"]["ours-fp32"]["host_overhead_ms_per_step"] >= 0
    fp32_bytes = report["engines"]["ours-fp32"]["weight_bytes_per_token"]
    assert report["engines"]["hf-transformers"]["weight_bytes_per_token"] == fp32_bytes
    assert report["engines"]["ours-int4"]["weight_bytes_per_token"] < report["engines"]["ours-int8"][
        "weight_bytes_per_token"] < fp32_bytes
    assert report["engines"]["ours-w8a8"]["weight_bytes_per_token"] == report["engines"]["ours-int8"][
        "weight_bytes_per_token"]
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == report
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 0
    assert set(report["ours_vs"]["ours-int8 / hf-transformers"]) == {"decode_batch1", "concurrent", "ttft"}
    targets = report["targets"]
    assert targets["concurrent_vs_hf"]["met"] is not None and targets["concurrent_vs_llama_server"]["met"] is None


def test_missing_peers_are_skipped_and_recorded_or_fail_when_required(tiny_run, monkeypatch):
    report = tiny_run("--engines", "ours-fp32", "llama-server", "llama-cpp-python")
    assert list(report["engines"]) == ["ours-fp32"]
    assert set(report["skipped"]) == {"llama-server", "llama-cpp-python"}
    assert "scripts/build-peers.sh" in report["skipped"]["llama-server"]
    with pytest.raises(SystemExit, match="llama-server is not built"):
        tiny_run("--engines", "ours-fp32", "llama-server", "--require-peers")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SystemExit, match="llama-server is not built"):
        tiny_run("--engines", "ours-fp32", "llama-server")


def test_targets_compare_the_best_of_ours_with_the_peers():
    def engine(b1, concurrent, ttft, roofline=0.5):
        return {"decode_tok_s_batch1": b1, "output_tok_s_concurrent": concurrent, "ttft_ms": ttft,
                "fraction_of_roofline": roofline}
    targets = benchmark.targets({
        "ours-fp32": engine(30, 200, 150, roofline=0.65), "ours-int8": engine(120, 310, 120),
        "ours-w8a8": engine(110, 330, 125),
        "ours-fp32-torch": engine(20, 900, 10), "ours-int8-per-op": engine(200, 900, 10),  # baselines never count
        "hf-transformers": engine(13, 66, 222), "llama-cpp-python": engine(117, None, 239),
        "llama-server": engine(105, 150, 312)})
    assert targets["concurrent_vs_llama_server"]["value"] == pytest.approx(330 / 150)
    assert targets["concurrent_vs_llama_server"]["met"] is True
    assert targets["concurrent_vs_llama_server"]["by"] == targets["concurrent_vs_hf"]["by"] == "ours-w8a8"
    assert targets["quantized_batch1_vs_llama_cpp_python"]["value"] == pytest.approx(120 / 117)
    assert targets["quantized_batch1_vs_llama_cpp_python"]["by"] == "ours-int8"
    assert targets["fp32_fraction_of_roofline"]["met"] is True
    assert targets["fp32_fraction_of_roofline"]["by"] == "ours-fp32"
    assert targets["ttft_vs_llama_cpp"]["value"] == pytest.approx(120 / 239)
    assert targets["concurrent_vs_hf"]["value"] == pytest.approx(330 / 66)


def test_prompts_are_unique_from_the_first_token():
    prompts = benchmark.make_prompts(16, 64, 49152)
    assert len({p[0] for p in prompts}) == 16 and all(len(p) == 64 for p in prompts)
