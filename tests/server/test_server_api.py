"""OpenAI API contract of the real server on a tiny random model: shapes, SSE framing, usage, metrics."""
from __future__ import annotations

import json

import httpx
import pytest

from live_server import metric_value

pytestmark = pytest.mark.timeout(300)


def post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def sse_events(raw: str) -> list[str]:
    """Split an SSE body into event payloads, asserting the `data: ...\\n\\n` framing."""
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: "):] for event in events]


def stream(server, path: str, body: dict) -> tuple[list[dict], str]:
    """Chunks of a streamed request (JSON-decoded) and the raw [DONE] marker."""
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    return [json.loads(event) for event in events[:-1]], events[-1]


def test_models_lists_the_served_model(server):
    data = httpx.get(server.url + "/v1/models").json()
    assert [card["id"] for card in data["data"]] == ["tiny"]
    assert data["data"][0]["max_model_len"] == 1024


def test_health_is_ok_when_the_engine_runs(server):
    response = httpx.get(server.url + "/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_completion_usage_counts_the_tokens(server, tokenizer):
    body = post(server, "/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 7,
                                            "ignore_eos": True, "temperature": 0}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length"
    prompt_tokens = len(tokenizer.encode("hello"))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7}


def test_stream_is_sse_with_done_and_matches_the_whole_response(server):
    request = {"prompt": "the quick brown fox", "max_tokens": 12, "ignore_eos": True, "temperature": 0}
    whole = post(server, "/v1/completions", request).json()
    chunks, done = stream(server, "/v1/completions", {**request, "stream_options": {"include_usage": True}})
    assert done == "[DONE]"
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" in chunk for chunk in chunks)
    *content, usage_chunk = chunks
    assert "".join(chunk["choices"][0]["text"] for chunk in content) == whole["choices"][0]["text"]
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(chunk["usage"] is None for chunk in content)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]


def test_stream_without_include_usage_has_no_usage(server):
    chunks, done = stream(server, "/v1/completions", {"prompt": "hi", "max_tokens": 3})
    assert done == "[DONE]" and chunks
    assert all("usage" not in chunk for chunk in chunks)


def test_chat_stream_sends_role_then_content(server, tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    chunks, done = stream(server, "/v1/chat/completions", {"messages": messages, "max_completion_tokens": 5,
                                                           "ignore_eos": True, "stream_options": {"include_usage": True}})
    assert done == "[DONE]"
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert chunks[-1]["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_chat_whole_response(server):
    body = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                                 "ignore_eos": True}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 4


def test_n_choices_fan_out(server):
    body = post(server, "/v1/completions", {"prompt": "abc", "n": 3, "max_tokens": 4, "ignore_eos": True,
                                            "seed": 7}).json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12
    chunks, _ = stream(server, "/v1/completions", {"prompt": "abc", "n": 2, "max_tokens": 3, "ignore_eos": True})
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_multiple_prompts_count_each_prompt_once(server, tokenizer):
    body = post(server, "/v1/completions", {"prompt": ["ab", "cde"], "n": 2, "max_tokens": 2,
                                            "ignore_eos": True}).json()
    assert len(body["choices"]) == 4
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode("ab")) + len(tokenizer.encode("cde"))


def test_seeded_sampling_repeats(server):
    request = {"prompt": "seed", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 123}
    first = post(server, "/v1/completions", request).json()["choices"][0]["text"]
    assert post(server, "/v1/completions", request).json()["choices"][0]["text"] == first


def test_stop_string_cuts_the_text(server):
    request = {"prompt": "stop test", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    text = post(server, "/v1/completions", request).json()["choices"][0]["text"]
    stop = next(char for char in text[len(text) // 2:] if char != "\ufffd")
    choice = post(server, "/v1/completions", {**request, "stop": [stop]}).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[:text.index(stop)]


def test_completion_logprobs(server):
    choice = post(server, "/v1/completions", {"prompt": "lp", "max_tokens": 3, "logprobs": 2,
                                              "ignore_eos": True}).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 3
    assert all(value <= 0 for value in logprobs["token_logprobs"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])


def test_chat_logprobs(server):
    choice = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                                   "logprobs": True, "top_logprobs": 3,
                                                   "ignore_eos": True}).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 2
    assert all(len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0 for entry in content)


def test_metrics_use_vllm_names_and_count_tokens(server):
    before = metric_value(server.url, "vllm:generation_tokens_total", 'model_name="tiny"')
    post(server, "/v1/completions", {"prompt": "count", "max_tokens": 9, "ignore_eos": True})
    assert metric_value(server.url, "vllm:generation_tokens_total", 'model_name="tiny"') - before == 9
    text = httpx.get(server.url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:request_aborted_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket"):
        assert any(line.startswith(name + "{") and 'model_name="tiny"' in line for line in text.splitlines()), name
    assert metric_value(server.url, "vllm:request_success_total", 'finished_reason="length"') >= 1
