"""The HF baseline server's OpenAI contract on a tiny random model: SSE framing, usage, ignore_eos, errors."""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from live_server import metric_value, poll
from test_server_api import sse_events

pytestmark = pytest.mark.timeout(120)


def stream(url: str, path: str, body: dict) -> tuple[list[dict], str]:
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    return [json.loads(event) for event in events[:-1]], events[-1]


def test_stream_is_sse_with_done_and_exact_usage(hf_url, hf_tokenizer):
    chunks, done = stream(hf_url, "/v1/completions", {"prompt": "hello there", "max_tokens": 7, "ignore_eos": True,
                                                       "temperature": 0, "stream_options": {"include_usage": True}})
    assert done == "[DONE]"
    *content, usage_chunk = chunks
    assert content and all(chunk["object"] == "text_completion" and chunk["usage"] is None for chunk in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    prompt_tokens = len(hf_tokenizer.encode("hello there"))
    assert usage_chunk["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 7,
                                    "total_tokens": prompt_tokens + 7}


@pytest.mark.parametrize("max_tokens", [1, 12])
def test_ignore_eos_gives_exactly_max_tokens(hf_url, max_tokens):
    body = httpx.post(hf_url + "/v1/completions", json={"prompt": "x", "max_tokens": max_tokens, "ignore_eos": True,
                                                        "temperature": 1.0, "seed": 3}, timeout=60).json()
    assert body["usage"]["completion_tokens"] == max_tokens
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_stream_and_models(hf_url):
    chunks, done = stream(hf_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 3, "ignore_eos": True})
    assert done == "[DONE]" and chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    models = httpx.get(hf_url + "/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == "hf"
    assert httpx.get(hf_url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("raw, param", [
    ('{"prompt": "a", "max_tokens": -1}', "max_tokens"),
    ('{"prompt": "a", "max_tokens": 2', None),
    ('{"prompt": "a", "stop": ["b"]}', "prompt"),
    ('{"prompt": "a", "max_tokens": 100000}', "max_tokens"),
])
def test_bad_input_is_400_with_an_openai_error_body(hf_url, raw, param):
    response = httpx.post(hf_url + "/v1/completions", content=raw, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_one_generation_at_a_time(hf_url):
    """While one request generates, a second one waits (and its queue time is observed)."""
    before = metric_value(hf_url, "vllm:request_queue_time_seconds_count")
    body = {"prompt": "busy", "max_tokens": 400, "ignore_eos": True}
    threads = [threading.Thread(target=httpx.post, args=(hf_url + "/v1/completions",),
                                kwargs={"json": body, "timeout": 120}) for _ in range(2)]
    for thread in threads:
        thread.start()
    one_waits = poll(lambda: (metric_value(hf_url, "vllm:num_requests_running"),
                              metric_value(hf_url, "vllm:num_requests_waiting")) == (1, 1), timeout_s=60,
                     interval_s=0.02)
    for thread in threads:
        thread.join(120)
    assert one_waits
    assert metric_value(hf_url, "vllm:request_queue_time_seconds_count") - before == 2
