"""Health rules with the real engine in-process: loading, hung loop, dead loop, draining (503 each)."""
from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from inference.config import SamplingParams
from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState

pytestmark = pytest.mark.timeout(120)


def make_state(engine_dir, stall_timeout_s: float = 0.5) -> ServerState:
    from inference.async_engine import AsyncLLMEngine

    settings = ServerSettings(served_model_name="tiny", stall_timeout_s=stall_timeout_s)
    return ServerState(settings, lambda: AsyncLLMEngine.from_path(engine_dir))


async def wait_for(condition, timeout_s: float = 10.0) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def test_loading_then_ready(engine_dir):
    async def scenario():
        state = make_state(engine_dir)
        assert state.health() == (False, "loading")
        await state.load()
        assert state.health() == (True, "ok")
        await state.stop()

    asyncio.run(scenario())


def test_hung_engine_loop_turns_unhealthy_within_seconds(engine_dir):
    async def scenario():
        state = make_state(engine_dir)
        await state.load()
        llm_engine, release = state.engine.engine, threading.Event()
        real_step = llm_engine.step
        llm_engine.step = lambda: (release.wait(20), real_step())[1]
        stream = state.engine.add_request("hang", [1, 2, 3], SamplingParams(max_tokens=2))
        assert await wait_for(lambda: not state.health()[0])
        assert "not stepped" in state.health()[1]
        release.set()
        assert [output async for output in stream][-1].finished
        assert await wait_for(lambda: state.health()[0])
        await state.stop()

    asyncio.run(scenario())


def test_dead_engine_loop_is_unhealthy_and_requests_get_503(engine_dir):
    async def scenario():
        state = make_state(engine_dir)
        await state.load()

        def broken_step():
            raise RuntimeError("boom")

        state.engine.engine.step = broken_step
        with pytest.raises(RuntimeError):
            [output async for output in state.engine.add_request("dead", [1, 2], SamplingParams(max_tokens=2))]
        assert state.health() == (False, "engine loop is not running")
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            health = await client.get("/health")
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        assert health.status_code == 503
        await state.stop()

    asyncio.run(scenario())


def test_engine_dying_mid_request_is_503_or_an_in_band_stream_error(engine_dir):
    async def scenario():
        state = make_state(engine_dir)
        await state.load()
        llm_engine, real_step, steps = state.engine.engine, state.engine.engine.step, []

        def dies_on_third_step():
            steps.append(1)
            if len(steps) == 3:
                raise RuntimeError("boom")
            return real_step()

        llm_engine.step = dies_on_third_step
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            streamed = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 50, "stream": True})
            whole = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5})
        events = streamed.text.strip().split("\n\n")
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "engine_error"
        assert whole.status_code == 503
        await state.stop()

    asyncio.run(scenario())


def test_draining_is_unhealthy_and_refuses_work(engine_dir):
    async def scenario():
        state = make_state(engine_dir)
        await state.load()
        assert await state.drain(timeout_s=0)
        assert state.health() == (False, "draining")
        await state.stop()

    asyncio.run(scenario())
