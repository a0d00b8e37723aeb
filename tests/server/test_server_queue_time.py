"""Queue time: a request that waits behind a full batch is observed in vLLM's queue/prefill/decode histograms."""
from __future__ import annotations

import threading

import httpx
import pytest

from live_server import metric_value, poll, start_server

pytestmark = pytest.mark.timeout(300)
PHASES = ("vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds")


@pytest.fixture(scope="module")
def one_seq_server(engine_dir, tmp_path_factory):
    """A batch of one: a second request must wait until the first finishes."""
    live = start_server(engine_dir, tmp_path_factory.mktemp("one-seq-logs"), "--engine-arg", "max_num_seqs=1")
    yield live
    live.stop()


def counts(url: str) -> dict[str, float]:
    return {name: metric_value(url, name + "_count", 'model_name="tiny"') for name in PHASES}


def test_request_behind_a_full_batch_waits_and_its_queue_time_is_observed(one_seq_server):
    url = one_seq_server.url
    before = counts(url)
    queue_sum_before = metric_value(url, "vllm:request_queue_time_seconds_sum")
    second: list[httpx.Response] = []
    long_stream = {"prompt": "first", "max_tokens": 600, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=long_stream, timeout=120) as first:
        lines = first.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the first request is running
        waiter = threading.Thread(target=lambda: second.append(httpx.post(
            url + "/v1/completions", json={"prompt": "second", "max_tokens": 2, "ignore_eos": True}, timeout=120)))
        waiter.start()
        saw_waiting = poll(lambda: metric_value(url, "vllm:num_requests_waiting") == 1, timeout_s=60, interval_s=0.02)
        assert saw_waiting, "the second request never waited behind the first"
        assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
    waiter.join(120)
    assert second and second[0].status_code == 200
    after = counts(url)
    assert all(after[name] - before[name] == 2 for name in PHASES), (before, after)
    assert metric_value(url, "vllm:request_queue_time_seconds_sum") > queue_sum_before
