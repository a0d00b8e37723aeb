"""The drill's streaming chat load against a fake OpenAI server (httpx MockTransport): concurrency, retries
before the first chunk, broken streams after it, bounds in time, and an abort that cuts streams."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from lab_tasks import chatload, drill
from lab_tasks.chatload import ChatLoad


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class Chunks(httpx.AsyncByteStream):
    """An SSE body of `tokens` chunks, `pause_s` apart; `cut_after` raises a read error after that many."""

    def __init__(self, tokens: int, pause_s: float, cut_after: int | None = None):
        self.tokens, self.pause_s, self.cut_after = tokens, pause_s, cut_after

    async def __aiter__(self):
        for index in range(self.tokens):
            if self.cut_after is not None and index == self.cut_after:
                raise httpx.ReadError("connection reset by peer")
            await asyncio.sleep(self.pause_s)
            yield sse({"choices": [{"index": 0, "delta": {"content": f" w{index}"}}]})
        yield sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": self.tokens}})
        yield b"data: [DONE]\n\n"


class FakeAPI:
    """The server behind the VIP: `state` is "up", "down" (connections refused), "cut" (streams die) or
    "hang" (requests get no answer at all, as through a balancer that lost the VIP)."""

    def __init__(self, tokens: int = 4, pause_s: float = 0.01):
        self.state, self.tokens, self.pause_s = "up", tokens, pause_s
        self.in_flight = self.most_in_flight = self.hanging = 0
        self.bodies: list[dict] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.state == "down":
            raise httpx.ConnectError("connection refused")
        self.bodies.append(json.loads(request.content))
        if self.state == "hang":
            self.hanging += 1
            await asyncio.sleep(3600)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.pause_s)
        self.in_flight -= 1
        cut = 1 if self.state == "cut" else None
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Chunks(self.tokens, self.pause_s, cut))


def load(api: FakeAPI, clients: int = 8, duration_s: float = 1.0, retries: int = 2) -> ChatLoad:
    return ChatLoad("http://10.213.7.200", "smollm2", clients, 4, duration_s, retries=retries,
                    transport=httpx.MockTransport(api))


def test_clients_stream_chat_completions_concurrently_until_the_deadline():
    api = FakeAPI()
    chat = load(api, duration_s=0.6)
    chat.start()
    chat.join(timeout=5)
    assert not chat.is_alive(), "the load must end on its own at its deadline"
    samples = [s for s in chat.stop() if not s.probe]
    assert len(samples) >= 8 and all(s.ok and s.chunks == 4 for s in samples)
    assert 8 < api.most_in_flight <= 8 + chatload.MAX_PROBES_IN_FLIGHT
    body = api.bodies[0]
    assert body["stream"] and body["messages"][0]["role"] == "user" and body["max_tokens"] == 4
    assert body["model"] == "smollm2" and body["stream_options"] == {"include_usage": True}


def test_refused_requests_are_retried_and_the_outage_measured():
    api = FakeAPI()
    chat = load(api, duration_s=5)
    chat.start()
    assert drill.wait_until(lambda: chat.succeeded_since(0.0, 8), 3)
    t_break, api.state = chat.now(), "down"
    time.sleep(0.5)
    t_moved, api.state = chat.now(), "up"
    assert drill.wait_until(lambda: chat.succeeded_since(t_moved, 8), 3)
    summary = chat.summary(chat.stop(), t_break, t_moved)
    assert summary["retries"] > 0 and summary["broken_streams"] == 0 and set(summary["errors"]) == {"connection"}
    assert 0.3 < summary["outage_s"] < 1.0 and summary["recovered"]
    assert summary["failed_after_vip_moved"] == 0


def test_streams_cut_after_their_first_chunk_are_broken_not_retried():
    api = FakeAPI()
    chat = load(api, clients=2, duration_s=5)
    api.state = "cut"
    chat.start()
    assert drill.wait_until(lambda: len(chat.samples) >= 4, 3)
    samples = [s for s in chat.stop() if not s.probe]
    assert all(not s.ok and s.chunks == 1 and s.attempt == 0 for s in samples)
    summary = chat.summary(samples, 0.0, None)
    assert summary["broken_streams"] == len(samples) == summary["failed"] and summary["retries"] == 0
    assert summary["errors"] == {"connection": len(samples)}


def test_a_stream_without_its_usage_chunk_counts_as_cut():
    class NoUsage(Chunks):
        async def __aiter__(self):
            yield sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]})

    async def handler(request):
        return httpx.Response(200, stream=NoUsage(1, 0))

    chat = ChatLoad("http://vip", "m", 1, 4, 5, transport=httpx.MockTransport(handler))
    chat.start()
    assert drill.wait_until(lambda: chat.samples, 3)
    sample = chat.stop()[0]
    assert (sample.ok, sample.error) == (False, "cut")


@pytest.mark.parametrize("abort", [True, False])
def test_stop_waits_for_streams_in_flight_unless_aborted(abort):
    api = FakeAPI(tokens=20, pause_s=0.1)  # 2 s per stream
    chat = load(api, clients=2, duration_s=10)
    chat.start()
    time.sleep(0.3)
    started = time.monotonic()
    samples = [s for s in chat.stop(abort=abort) if not s.probe]
    took = time.monotonic() - started
    assert (took < 0.5) if abort else (1.0 < took < 5), took
    assert len(samples) == (0 if abort else 2)


def test_streams_hanging_since_the_break_are_given_up_as_broken_and_probes_time_the_outage(monkeypatch):
    monkeypatch.setattr(chatload, "STALL_S", 0.3)
    api = FakeAPI(tokens=4, pause_s=0.05)
    chat = load(api, duration_s=10)
    chat.start()
    assert drill.wait_until(lambda: chat.succeeded_since(0.0, 8), 3)
    api.state = "hang"  # every request sent now hangs
    assert drill.wait_until(lambda: api.hanging >= 8, 3)
    t_break = chat.now()
    chat.mark_break(t_break)
    api.state = "down"  # new connections are refused until the VIP moves
    time.sleep(0.5)
    t_moved, api.state = chat.now(), "up"
    assert drill.wait_until(lambda: chat.succeeded_since(t_moved, 10), 5), "clients stuck on hung streams"
    summary = chat.summary(chat.stop(), t_break, t_moved)
    assert summary["broken_streams"] >= 1 and summary["errors"].get("stalled", 0) == summary["broken_streams"]
    assert 0.3 < summary["outage_s"] < 1.0, summary["outages"]
    assert summary["failed_after_vip_moved"] == 0 and summary["probes"] > 0
