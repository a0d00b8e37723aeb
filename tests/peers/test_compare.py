"""compare.py end to end on the tiny model: opslab + hf (llama-server not built → skipped), JSON, ratios, plots."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from inference.peers.compare import main

pytestmark = pytest.mark.timeout(180)
OUTPUT_LEN = 8


def compare_args(tiny_engine_dir, tiny_hf_dir, tmp_path, *extra: str) -> list[str]:
    gguf = tmp_path / "unused.gguf"  # llama-server is skipped, so nothing reads it
    gguf.write_bytes(b"")
    return ["--servers", "opslab,hf,llama-server", "--concurrency", "1,2", "--num-prompts", "4", "--input-len", "8",
            "--output-len", str(OUTPUT_LEN), "--warmup", "1", "--threads", "1", "--engine-dir", str(tiny_engine_dir),
            "--hf-model", str(tiny_hf_dir), "--gguf", str(gguf), "--output", str(tmp_path / "out" / "compare.json"),
            *extra]


@pytest.fixture
def no_peers(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path / "no-peers"))


def test_compare_writes_json_ratios_and_plots(tiny_engine_dir, tiny_hf_dir, tmp_path, no_peers, monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # outside CI a missing peer is skipped, not fatal
    result = CliRunner().invoke(main, compare_args(tiny_engine_dir, tiny_hf_dir, tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    document = json.loads((out / "compare.json").read_text())
    assert "scripts/build-peers.sh llama-server" in document["skipped"]["llama-server"]
    assert "SKIPPED llama-server" in result.output
    runs = {(run["endpoint"], run["concurrency"]): run for run in document["runs"]}
    assert sorted(runs) == [("hf", 1), ("hf", 2), ("opslab", 1), ("opslab", 2)]
    for run in runs.values():
        assert run["metrics"]["completed"] == 4 and run["metrics"]["errors"] == {}
        assert run["mean_output_tokens"] == OUTPUT_LEN and run["honoured_ignore_eos"] is True
    offline = {record["concurrency"]: record for record in document["offline"]}
    assert [offline[c]["total_output_tokens"] for c in (1, 2)] == [4 * OUTPUT_LEN] * 2
    for level in (1, 2):
        ours, hf = runs["opslab", level]["metrics"], runs["hf", level]["metrics"]
        cell = document["ratios"]["opslab/hf"][f"c{level}"]
        assert cell["output_throughput"] == pytest.approx(ours["output_throughput"] / hf["output_throughput"])
        assert cell["median_ttft"] == pytest.approx(ours["median_ttft_ms"] / hf["median_ttft_ms"])
        overhead = 100 * (1 - ours["output_throughput"] / offline[level]["output_throughput"])
        assert document["server_overhead_pct"][f"c{level}"] == pytest.approx(overhead)
    assert "opslab/llama-server" not in document["ratios"]
    assert document["targets"]["output_throughput_vs_llama_server_c16"] == {"value": None, "target": ">= 2",
                                                                             "met": None}
    for name in ("compare-vs-concurrency.png", "compare-throughput.png", "compare-latency.png"):
        assert (out / name).stat().st_size > 0


def test_required_peer_missing_fails_before_running(tiny_engine_dir, tiny_hf_dir, tmp_path, no_peers):
    result = CliRunner().invoke(main, compare_args(tiny_engine_dir, tiny_hf_dir, tmp_path, "--require-peers"))
    assert result.exit_code == 2
    assert "Error: peers not built" in result.output and "scripts/build-peers.sh llama-server" in result.output
    assert not (tmp_path / "out" / "compare.json").exists()
