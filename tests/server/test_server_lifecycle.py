"""Client disconnects abort and free KV blocks; SIGTERM drains streams and exits 0."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from live_server import ROOT, free_port, metric_value, poll, start_server

pytestmark = pytest.mark.timeout(400)

LONG = {"prompt": "abort me", "max_tokens": 500, "ignore_eos": True}


def engine_idle(url: str) -> bool:
    """No running or waiting request and no KV block in use."""
    return (metric_value(url, "vllm:num_requests_running") == 0 and metric_value(url, "vllm:num_requests_waiting") == 0
            and metric_value(url, "vllm:kv_cache_usage_perc") == 0)


async def open_and_drop(client: httpx.AsyncClient, url: str) -> None:
    """Start a long stream, wait for its first chunk, then hang up."""
    async with client.stream("POST", url + "/v1/completions", json={**LONG, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return


async def drop_streams(url: str, total: int, concurrency: int) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(total // concurrency):
            await asyncio.gather(*(open_and_drop(client, url) for _ in range(concurrency)))


def test_hundred_dropped_streams_free_every_kv_block(server):
    aborted_before = metric_value(server.url, "vllm:request_aborted_total")
    asyncio.run(drop_streams(server.url, total=100, concurrency=10))
    assert poll(lambda: engine_idle(server.url), timeout_s=60)
    assert metric_value(server.url, "vllm:request_aborted_total") - aborted_before == 100


def test_dropped_non_streaming_request_is_aborted(server):
    aborted_before = metric_value(server.url, "vllm:request_aborted_total")
    with pytest.raises(httpx.ReadTimeout):
        # the client gives up long before the engine can make 1000 tokens (the fused kernels made 1.5 s too long)
        httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 1000}, timeout=0.25)
    assert poll(lambda: metric_value(server.url, "vllm:request_aborted_total") - aborted_before == 1)
    assert poll(lambda: engine_idle(server.url), timeout_s=60)


def test_sigterm_drains_running_streams_then_exits_zero(engine_dir, tmp_path):
    live = start_server(engine_dir, tmp_path, "--drain-timeout", "120")
    request = {"prompt": "drain", "max_tokens": 600, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
    try:
        with httpx.stream("POST", live.url + "/v1/completions", json=request, timeout=120) as running:
            lines = running.iter_lines()
            first = next(lines)
            live.terminate()
            assert poll(lambda: httpx.get(live.url + "/health").status_code == 503)
            assert httpx.get(live.url + "/health").json() == {"status": "draining"}
            refused = httpx.post(live.url + "/v1/completions", json={"prompt": "late", "max_tokens": 1})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            events = [line for line in [first, *lines] if line]
        assert events[-1] == "data: [DONE]"
        assert '"completion_tokens":600' in events[-2]
        assert live.wait(60) == 0
    finally:
        live.stop()


def test_engine_that_cannot_load_exits_one(tmp_path):
    command = [sys.executable, "-m", "inference.server", "--engine", str(tmp_path / "missing"), "--host", "127.0.0.1",
               "--port", str(free_port())]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 1
    assert "engine failed to load" in finished.stderr
