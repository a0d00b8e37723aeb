"""No request stops the server: one failing request fails alone (500 or an in-band stream error), a dead engine
loop makes the process exit non-zero, and request sizes are bounded (413 for bodies, read no further than the
limit; 400 for too many prompts, messages or characters)."""
from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState
from live_server import start_server

pytestmark = pytest.mark.timeout(300)

PROMPT = {"prompt": "fine", "max_tokens": 8, "ignore_eos": True, "temperature": 0}


def in_process_state(engine_dir, **settings) -> ServerState:
    from inference.async_engine import AsyncLLMEngine

    return ServerState(ServerSettings(served_model_name="tiny", **settings),
                       lambda: AsyncLLMEngine.from_path(engine_dir))


class FailingDetokenizer:
    """One request's detokenizer that cannot decode anything."""

    def push(self, token_id: int) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected decode failure")

    def flush(self) -> str:
        return ""


def fail_prompts_containing(state: ServerState, marker: str) -> None:
    """Fault injection: requests whose prompt text contains `marker` get a detokenizer that raises."""
    llm_engine = state.engine.engine
    add_request = llm_engine.add_request

    def add_with_fault(request_id, prompt_token_ids, *args):
        seq = add_request(request_id, prompt_token_ids, *args)
        if marker in llm_engine.tokenizer.decode(prompt_token_ids):
            llm_engine.requests[request_id].stream.detokenizer = FailingDetokenizer()
        return seq

    llm_engine.add_request = add_with_fault


def test_a_request_the_engine_fails_gets_500_or_a_stream_error_and_the_others_complete(engine_dir):
    async def scenario():
        state = in_process_state(engine_dir)
        await state.load()
        fail_prompts_containing(state, "BOOM")
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            def post(body):
                return client.post("/v1/completions", json=body)

            responses = await asyncio.gather(
                post(PROMPT), post({**PROMPT, "prompt": "BOOM"}), post({**PROMPT, "n": 3}),
                post({**PROMPT, "prompt": "BOOM", "stream": True}), post({**PROMPT, "stream": True}))
            after = await post(PROMPT)
            health = await client.get("/health")
        stats = state.engine.stats()
        await state.stop()
        return responses, after, health, stats

    (ok, failed, ok_n, failed_stream, ok_stream), after, health, stats = asyncio.run(scenario())
    assert ok.status_code == ok_n.status_code == ok_stream.status_code == after.status_code == 200
    assert len(ok_n.json()["choices"]) == 3 and ok.json()["usage"]["completion_tokens"] == 8
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "generation_failed" and "injected" in failed.json()["error"]["message"]
    events = failed_stream.text.strip().split("\n\n")
    assert failed_stream.status_code == 200 and events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "generation_failed"
    assert ok_stream.text.strip().endswith("data: [DONE]") and '"error"' not in ok_stream.text
    assert health.status_code == 200
    assert stats.is_alive and stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_watchdog_reports_a_dead_engine_loop_and_new_requests_get_503(engine_dir):
    async def scenario():
        fatal = asyncio.Event()
        state = ServerState(ServerSettings(served_model_name="tiny", watchdog_interval_s=0.05),
                            in_process_state(engine_dir).load_engine, on_fatal=fatal.set)
        await state.load()

        def broken_schedule():
            raise RuntimeError("injected scheduler bug")

        state.engine.engine.scheduler.schedule = broken_schedule
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            crashed = await client.post("/v1/completions", json=PROMPT)
            await asyncio.wait_for(fatal.wait(), timeout=5)
            refused = await client.post("/v1/completions", json=PROMPT)
            health = await client.get("/health")
        await state.stop()
        return crashed, refused, health

    crashed, refused, health = asyncio.run(scenario())
    assert crashed.status_code == 503 and crashed.json()["error"]["code"] == "engine_error"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
    assert health.status_code == 503


def test_server_process_exits_nonzero_within_seconds_when_its_engine_loop_dies(engine_dir, tmp_path):
    live = start_server(engine_dir, tmp_path, entry=("tests/server/crashing_server.py",))
    try:
        assert httpx.post(live.url + "/v1/completions", json=PROMPT, timeout=30).status_code == 200
        crashed = httpx.post(live.url + "/v1/completions", json={**PROMPT, "seed": 424242}, timeout=30)
        assert crashed.status_code == 503, crashed.text
        start = time.monotonic()
        code = live.wait(timeout_s=15)
        assert code != 0 and time.monotonic() - start < 10
        assert "engine loop died" in live.log()
    finally:
        live.stop()


@pytest.fixture(scope="module")
def limited_server(engine_dir, tmp_path_factory):
    live = start_server(engine_dir, tmp_path_factory.mktemp("limited-logs"), "--max-body-bytes", "65536",
                        "--max-prompts", "4", "--max-messages", "8", "--max-prompt-chars", "900")
    yield live
    live.stop()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[65]] * 5, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": "a" * 901, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b" * 901], "max_tokens": 1}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 9, "max_tokens": 1}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * 500}] * 2, "max_tokens": 1}, 400,
     "messages"),
])
def test_prompt_message_and_character_limits(limited_server, path, body, status, param):
    assert error_of(httpx.post(limited_server.url + path, json=body, timeout=30), status)["param"] == param
    at_limit = {"prompt": ["a" * 900] * 4, "max_tokens": 1}
    assert httpx.post(limited_server.url + "/v1/completions", json=at_limit, timeout=60).status_code == 200


def test_a_body_over_the_limit_is_413_by_content_length(limited_server):
    body = json.dumps({"prompt": "a" * 70_000}).encode()
    error = error_of(httpx.post(limited_server.url + "/v1/completions", content=body, timeout=30), 413)
    assert error["code"] == "request_too_large" and "65536" in error["message"]


def send_chunked_until_answered(url: str, total_bytes: int, chunk_bytes: int = 64 * 1024) -> tuple[bytes, int]:
    """POST a chunked body (no Content-Length) of up to `total_bytes`, stopping once the server answers;
    returns (the answer, body bytes sent)."""
    address = urlparse(url)
    sent = 0
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % chunk_bytes + b"[" * chunk_bytes + b"\r\n"
        deadline = time.monotonic() + 60
        while sent < total_bytes and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk_bytes
        answer = b""
        while b"request_too_large" not in answer and select.select([sock], [], [], 10)[0]:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, sent


def test_a_streamed_body_is_cut_off_at_the_limit_not_read_whole(limited_server):
    answer, sent = send_chunked_until_answered(limited_server.url, total_bytes=64 * 2**20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_too_large"' in answer
    assert sent < 32 * 2**20, f"the server let the client send {sent} bytes before answering"
    assert httpx.get(limited_server.url + "/health", timeout=10).status_code == 200


class SlowTokenizer:
    """The engine's tokenizer, except that encoding takes `delay_s` (blocking, like a huge prompt would)."""

    def __init__(self, tokenizer, delay_s: float):
        self.tokenizer, self.delay_s = tokenizer, delay_s
        self.encoding = threading.Event()
        self.calls = 0

    def encode(self, text, add_special_tokens=True):
        self.calls += 1
        self.encoding.set()
        time.sleep(self.delay_s)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_health_and_metrics_answer_fast_while_a_request_is_tokenized(engine_dir):
    """Tokenizing runs in a worker thread: a 2-second encode does not hold up /health or /metrics."""
    async def scenario():
        state = in_process_state(engine_dir)
        await state.load()
        slow = SlowTokenizer(state.engine.engine.tokenizer, delay_s=2.0)
        state.engine.engine.tokenizer = slow
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            big = asyncio.create_task(client.post("/v1/completions", json={"prompt": "x" * 1000, "max_tokens": 1}))
            while not slow.encoding.is_set():
                await asyncio.sleep(0.01)
            latencies = []
            for path in ("/health", "/metrics", "/health"):
                start = time.monotonic()
                assert (await client.get(path)).status_code == 200
                latencies.append(time.monotonic() - start)
            still_tokenizing = not big.done()
            response = await big
        await state.stop()
        return latencies, still_tokenizing, response

    latencies, still_tokenizing, response = asyncio.run(scenario())
    assert still_tokenizing and response.status_code == 200
    assert max(latencies) < 0.1, latencies


def test_a_full_queue_answers_429_before_tokenizing(engine_dir):
    async def scenario():
        state = in_process_state(engine_dir, max_queue=1)
        await state.load()
        slow = SlowTokenizer(state.engine.engine.tokenizer, delay_s=0.0)
        state.engine.engine.tokenizer = slow
        release = state.admit(1)  # someone else holds the only slot
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            refused = await client.post("/v1/completions", json={"prompt": "y" * 1000, "max_tokens": 1})
            calls_while_full = slow.calls
            release()
            admitted = await client.post("/v1/completions", json={"prompt": "y", "max_tokens": 1})
        await state.stop()
        return refused, calls_while_full, admitted

    refused, calls_while_full, admitted = asyncio.run(scenario())
    assert error_of(refused, 429)["code"] == "queue_full" and calls_while_full == 0
    assert admitted.status_code == 200

