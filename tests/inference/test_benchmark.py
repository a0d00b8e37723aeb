"""benchmark.py runs end to end on a tiny checkpoint (no timing assertions: speed claims belong in its JSON)."""
from __future__ import annotations

import json

from tiny_llama import hf_tiny

from inference import benchmark
from inference.tokenizer import Tokenizer


def test_benchmark_reports_every_metric_for_both_engines(tmp_path, monkeypatch):
    hf_tiny(vocab_size=258).save_pretrained(tmp_path / "hf")
    Tokenizer.byte_level().save(tmp_path / "hf")
    monkeypatch.setattr(benchmark, "run_isolated", lambda name, config: benchmark.RUNNERS[name](config))
    report = benchmark.main(["--model", str(tmp_path / "hf"), "--max-tokens", "3", "--concurrency", "2",
                             "--prompt-tokens", "6", "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "out")])
    assert set(report["engines"]) == {"ours", "hf-transformers"}
    ours = report["engines"]["ours"]
    assert ours["decode_tok_s_batch1"] > 0 and ours["output_tok_s_concurrent"] > 0 and ours["ttft_ms"] > 0
    assert ours["host_overhead_ms_per_step"] >= 0
    assert ours["weight_bytes_per_token"] == report["engines"]["hf-transformers"]["weight_bytes_per_token"]
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == report
    assert (tmp_path / "out" / "benchmark.png").stat().st_size > 0
    assert set(report["ours_vs"]["hf-transformers"]) == {"decode_batch1", "concurrent", "ttft"}


def test_prompts_are_unique_from_the_first_token():
    prompts = benchmark.make_prompts(16, 64, 49152)
    assert len({p[0] for p in prompts}) == 16 and all(len(p) == 64 for p in prompts)
