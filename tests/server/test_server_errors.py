"""Bad input gets an OpenAI error body with 400/404/413 (never 5xx) and the next request is served as usual;
API key and queue limits (401, 429)."""
from __future__ import annotations

import httpx
import pytest

from live_server import API_KEY, poll

pytestmark = pytest.mark.timeout(300)

MESSAGES = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    # (path, raw body, status, param)
    ("/v1/completions", b'{"prompt": "x",', 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b'{"max_tokens": 4}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": []}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [300]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
    ("/v1/completions", b'{"prompt": "x", "n": 0}', 400, "n"),
    ("/v1/completions", b'{"prompt": ["a", "b"], "n": 33}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
    ("/v1/completions", b'{"prompt": "x", "stop": [""]}', 400, "stop"),
    ("/v1/completions", b'{"prompt": "x", "stop": 7}', 400, "stop"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 21}', 400, "logprobs"),
    ("/v1/completions", b'{"prompt": "x", "echo": true}', 400, "echo"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1024}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "' + b"y" * 1100 + b'"}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "model": "gpt-4"}', 404, "model"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 99}', 400,
     "top_logprobs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "response_format": '
                             b'{"type": "json_object"}}', 400, "response_format"),
    # numbers beyond what the engine takes (a 2**64 seed or a 2**63 top_k used to kill the engine loop)
    ("/v1/completions", b'{"prompt": "x", "seed": 18446744073709551616}', 400, "seed"),
    ("/v1/completions", b'{"prompt": "x", "seed": -9223372036854775809}', 400, "seed"),
    ("/v1/completions", b'{"prompt": "x", "top_k": 9223372036854775808}', 400, "top_k"),
    ("/v1/completions", b'{"prompt": "x", "top_k": 2147483648}', 400, "top_k"),
    ("/v1/completions", b'{"prompt": "x", "n": 65}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "n": 20, "max_tokens": 1000}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 2147483648}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1.5}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e400}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "x", "top_p": Infinity}', 400, "top_p"),
    ("/v1/completions", b'{"prompt": "x", "repetition_penalty": 1e999}', 400, "repetition_penalty"),
    ("/v1/completions", b'{"prompt": "x", "presence_penalty": -Infinity}', 400, "presence_penalty"),
    ("/v1/completions", b'{"prompt": "x", "stop_token_ids": [258]}', 400, "stop_token_ids"),
    ("/v1/completions", b'{"prompt": "x", "stop_token_ids": [1180591620717411303424]}', 400, "stop_token_ids"),
    ("/v1/completions", b'{"prompt": [[18446744073709551616]]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 18446744073709551616}', 400, "logprobs"),
    ("/v1/completions", b'{"prompt": "x", "stop": "' + b"s" * 257 + b'"}', 400, "stop"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400, None),
    ("/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', 400, None),  # an unpaired surrogate
    ("/v1/completions", b'{"prompt": ["a", "\\udfff"], "max_tokens": 2}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "16"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "logprobs": false}', 400, "logprobs"),
    ("/v1/completions", b'{"prompt": "x", "stream": 1}', 400, "stream"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": -1}', 400,
     "top_logprobs"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": '
                             b'1099511627776}', 400, "max_completion_tokens"),
]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(("path", "raw", "status", "param"), BAD_REQUESTS)
def test_bad_input_gets_an_openai_error_and_the_next_request_is_served(server, path, raw, status, param):
    response = httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert_openai_error(response, status, param)
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "ok", "max_tokens": 2, "temperature": 0.5,
                                                           "seed": 1}, timeout=30).status_code == 200
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_unknown_route_and_method_are_openai_errors(server):
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/completions"), 405)


def test_server_keeps_serving_after_bad_input(server):
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "ok", "max_tokens": 2}, timeout=30)
    assert response.status_code == 200


def test_api_key_is_required_on_v1(strict_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        error = assert_openai_error(httpx.get(strict_server.url + "/v1/models", headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    response = httpx.post(strict_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert_openai_error(response, 401)
    assert httpx.get(strict_server.url + "/health").status_code == 200
    good = httpx.get(strict_server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert good.status_code == 200


def test_full_queue_answers_429_with_retry_after(strict_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long_request = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", strict_server.url + "/v1/completions", json=long_request, headers=headers,
                      timeout=60) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # keep a reference: a collected iterator closes the response
        next(lines)  # admitted and generating: the one queue slot is taken
        refused = httpx.post(strict_server.url + "/v1/completions", json={"prompt": "y", "max_tokens": 1},
                             headers=headers, timeout=30)
        error = assert_openai_error(refused, 429)
        assert error["code"] == "queue_full" and refused.headers["Retry-After"] == "1"
    # the closed stream freed its slot
    status = poll(lambda: httpx.post(strict_server.url + "/v1/completions", json={"prompt": "y", "max_tokens": 1},
                                     headers=headers, timeout=30).status_code == 200)
    assert status
