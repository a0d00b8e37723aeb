"""The metric math on synthetic timelines: vLLM's definitions of TTFT, ITL, TPOT, E2EL, throughput, goodput."""
from __future__ import annotations

import pytest

from inference.bench.client import RequestResult, finish, record_chunk
from inference.bench.metrics import calculate_metrics, max_gap, parse_goodput, tpot_of


def timeline(start: float, chunk_times: list[float], output_tokens: int, prompt_tokens: int = 10) -> RequestResult:
    """A finished request whose content chunks arrived at `chunk_times`."""
    result = RequestResult(start=start)
    for index, now in enumerate(chunk_times):
        record_chunk(result, {"choices": [{"text": f"t{index}"}]}, now)
    record_chunk(result, {"choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                   "completion_tokens": output_tokens}}, chunk_times[-1])
    return finish(result)


def test_one_request_follows_vllm_definitions():
    result = timeline(0.0, [0.5, 0.6, 0.8, 1.1], output_tokens=4)
    assert result.success and result.generated_text == "t0t1t2t3"
    assert result.ttft == pytest.approx(0.5)
    assert result.itl == pytest.approx([0.1, 0.2, 0.3])
    assert result.latency == pytest.approx(1.1)
    assert tpot_of(result) == pytest.approx((1.1 - 0.5) / 3)


def test_tpot_uses_usage_tokens_not_chunks():
    result = timeline(0.0, [0.2, 1.2], output_tokens=11)  # 11 tokens arrived in 2 chunks
    assert tpot_of(result) == pytest.approx(1.0 / 10)
    assert tpot_of(timeline(0.0, [0.2], output_tokens=1)) == 0.0


def test_a_server_without_usage_has_its_content_chunks_counted():
    result = RequestResult(start=0.0)
    for index, now in enumerate([0.2, 0.3, 0.5]):
        record_chunk(result, {"choices": [{"text": f"t{index}"}]}, now)
    finish(result)
    assert result.output_tokens == 3 and not result.usage_reported
    assert tpot_of(result) == pytest.approx(0.3 / 2)
    metrics = calculate_metrics([result, timeline(0.0, [0.1, 0.2], output_tokens=5)], duration_s=1.0)
    assert metrics["total_output_tokens"] == 8 and metrics["output_tokens_counted_from_chunks"] == 1


def test_run_totals_throughputs_and_percentiles():
    results = [timeline(0.0, [0.1 * (i + 1), 0.1 * (i + 1) + 0.05 * (i + 1)], output_tokens=2) for i in range(10)]
    metrics = calculate_metrics(results, duration_s=4.0)
    assert metrics["completed"] == 10 and metrics["failed"] == 0
    assert metrics["total_output_tokens"] == 20 and metrics["total_input_tokens"] == 100
    assert metrics["output_throughput"] == pytest.approx(20 / 4.0)
    assert metrics["total_token_throughput"] == pytest.approx(120 / 4.0)
    assert metrics["request_throughput"] == pytest.approx(10 / 4.0)
    assert metrics["mean_ttft_ms"] == pytest.approx(550.0)
    assert metrics["median_ttft_ms"] == pytest.approx(550.0)
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert metrics[f"p50_{name}_ms"] <= metrics[f"p90_{name}_ms"] <= metrics[f"p99_{name}_ms"]
    assert metrics["p99_ttft_ms"] == pytest.approx(991.0)  # numpy's linear interpolation


def test_failures_are_counted_by_kind_and_excluded():
    good = timeline(0.0, [0.1, 0.2], output_tokens=2)
    failed = [finish(RequestResult(error="http_429")), finish(RequestResult(error="timeout")),
              finish(RequestResult(error="http_429")), finish(RequestResult())]
    metrics = calculate_metrics([good, *failed], duration_s=1.0)
    assert metrics["completed"] == 1 and metrics["failed"] == 4
    assert metrics["errors"] == {"http_429": 2, "timeout": 1, "no_content": 1}
    assert metrics["total_output_tokens"] == 2


def test_goodput_counts_requests_meeting_every_slo():
    fast = timeline(0.0, [0.1, 0.2], output_tokens=2)     # ttft 100 ms, tpot 100 ms
    slow_start = timeline(0.0, [0.9, 1.0], output_tokens=2)  # ttft 900 ms
    slow_decode = timeline(0.0, [0.1, 0.5], output_tokens=2)  # tpot 400 ms
    slos = parse_goodput(["ttft:500 tpot:150"])
    metrics = calculate_metrics([fast, slow_start, slow_decode], duration_s=2.0, goodput_slos_ms=slos)
    assert metrics["request_goodput"] == pytest.approx(1 / 2.0)
    assert calculate_metrics([fast], duration_s=1.0)["request_goodput"] is None


@pytest.mark.parametrize("spec", ["ttft", "ttft:", "speed:5", "tpot:-1", "ttft:x"])
def test_bad_goodput_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_goodput([spec])


def test_max_gap_spans_all_requests():
    first = timeline(0.0, [0.5, 1.0], output_tokens=2)
    second = timeline(0.0, [3.0, 3.2], output_tokens=2)  # nothing arrived between 1.0 and 3.0
    assert max_gap([first, second], start=0.0, end=3.5) == pytest.approx(2.0)
    assert max_gap([], start=0.0, end=1.5) == pytest.approx(1.5)


def test_chat_chunks_and_stream_errors():
    result = RequestResult(start=0.0)
    record_chunk(result, {"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 0.1)
    assert not result.chunk_times  # a role chunk carries no content: not the first token
    record_chunk(result, {"choices": [{"delta": {"content": "hi"}}]}, 0.3)
    assert result.ttft == pytest.approx(0.3)
    record_chunk(result, {"error": {"message": "engine died"}}, 0.4)
    assert not finish(result).success and result.error == "stream_error"
