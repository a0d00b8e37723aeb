"""SSE comment keepalives while a stream waits for its first token (a long prefill), and nothing else changes."""
import asyncio

from inference.server.errors import APIError
from inference.server.responses import SSE_DONE, SSE_KEEPALIVE, event_stream, with_keepalives


async def slow(items, delays):
    for item, delay in zip(items, delays):
        await asyncio.sleep(delay)
        yield item


async def collect(stream) -> list:
    return [item async for item in stream]


def test_a_gap_longer_than_the_interval_yields_none_and_keeps_waiting():
    got = asyncio.run(collect(with_keepalives(slow(["a", "b"], [0.12, 0.0]), 0.05)))
    assert got[-2:] == ["a", "b"] and got[:-2] == [None] * len(got[:-2]) and 1 <= len(got) - 2 <= 3


def test_no_keepalive_when_items_come_in_time():
    assert asyncio.run(collect(with_keepalives(slow([1, 2, 3], [0.0, 0.01, 0.0]), 1.0))) == [1, 2, 3]


def test_an_error_in_the_source_reaches_the_consumer():
    async def failing():
        yield 1
        raise APIError(503, "engine failed")

    async def run():
        seen = []
        try:
            async for item in with_keepalives(failing(), 1.0):
                seen.append(item)
        except APIError as error:
            return seen, error.message
    assert asyncio.run(run()) == ([1], "engine failed")


class SlowPrefill:
    """A Generation whose first output comes after a long prefill."""

    request_id, created, closed = "chatcmpl-1", 0, False

    async def outputs(self):
        await asyncio.sleep(0.12)
        yield "choice", "output"

    def close(self):
        self.closed = True


class OneChunkAPI:
    chunk_object = "chat.completion.chunk"

    def stream_choices(self, choice, output):
        return [{"index": 0, "delta": {"content": "hi"}}]


def test_event_stream_sends_comments_during_a_long_prefill_then_the_chunks():
    generation = SlowPrefill()
    events = asyncio.run(collect(event_stream(generation, OneChunkAPI(), "m", False, keepalive_s=0.05)))
    assert SSE_KEEPALIVE in events and events.index(SSE_KEEPALIVE) == 0
    assert events[-2].startswith("data: {") and '"content":"hi"' in events[-2] and events[-1] == SSE_DONE
    assert generation.closed
