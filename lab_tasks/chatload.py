"""Streamed chat completions from N concurrent clients at the inference API, for the failover drill.

Each client sends one streamed request after the other through the product's bench client
(inference.bench.client), a new connection each, as a client arriving after a failover would. A request
that fails before its first chunk is retried after a short pause, as OpenAI clients retry; one that fails
after it (a stream cut by the balancer that died) cannot be. Every attempt becomes a drill Sample.
Bounded in time (the drill's duration) and in count (`max_attempts`).
"""
from __future__ import annotations

import asyncio
import time

import httpx

from inference.bench.client import Endpoint, RequestOptions, send_request
from inference.bench.dataset import BenchPrompt
from lab_tasks.drill import LoadThread, Sample, summarize_streams

PROMPT = "Count from one to twenty in words, separated by commas."
CONNECT_TIMEOUT_S = 0.5  # a dead balancer shows as a refused or unanswered connect, not a long wait
REQUEST_TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.1
POLL_S = 0.05


class ChatLoad(LoadThread):
    """`clients` concurrent streamed chat completions at `base_url` until stopped, the deadline or `max_attempts`."""

    join_timeout_s = REQUEST_TIMEOUT_S + 5

    def __init__(self, base_url: str, model: str, clients: int, max_tokens: int, duration_s: float,
                 api_key: str | None = None, retries: int = 2, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__()
        self.endpoint = Endpoint("drill", base_url, api="chat", model=model, api_key=api_key)
        self.prompt = BenchPrompt(PROMPT, approx_input_tokens=len(PROMPT.split()), max_tokens=max_tokens)
        self.options = RequestOptions(temperature=0.0, ignore_eos=True, timeout_s=REQUEST_TIMEOUT_S, retries=0)
        self.clients, self.retries, self.transport = clients, retries, transport
        self.duration_s = duration_s
        self.max_attempts = clients * int(duration_s / RETRY_PAUSE_S + 1)
        self._requests = 0

    def summary(self, samples: list[Sample], t_break: float | None, t_moved: float | None) -> dict:
        """requests, failed, broken_streams, retries, outage_s, ... of the streams."""
        return summarize_streams(samples, t_break, t_moved)

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False,
                                     transport=self.transport) as http:
            workers = [asyncio.create_task(self._client(http)) for _ in range(self.clients)]
            while not all(w.done() for w in workers):
                if self._abort_event.is_set():
                    for worker in workers:
                        worker.cancel()
                await asyncio.wait(workers, timeout=POLL_S)
            for worker in workers:
                if not worker.cancelled() and worker.exception():
                    raise worker.exception()

    def _more(self, deadline: float) -> bool:
        return (not self._stop_event.is_set() and len(self.samples) < self.max_attempts
                and time.perf_counter() < deadline)

    async def _client(self, http: httpx.AsyncClient) -> None:
        deadline = self._t0 + self.duration_s
        while self._more(deadline):
            request, self._requests = self._requests, self._requests + 1
            for attempt in range(self.retries + 1):
                sample = await self._attempt(http, request, attempt)
                if sample.ok or sample.chunks or not self._more(deadline):
                    break
                await asyncio.sleep(RETRY_PAUSE_S)
            if not sample.ok:
                await asyncio.sleep(RETRY_PAUSE_S)  # a client whose request failed does not spin

    async def _attempt(self, http: httpx.AsyncClient, request: int, attempt: int) -> Sample:
        result = await send_request(http, self.endpoint, self.prompt, self.options)
        # A stream that ends without its final usage chunk was cut short, even when no error was raised.
        sample = Sample(t=round(result.start - self._t0, 3), ok=result.success and result.usage_reported,
                        end=round(time.perf_counter() - self._t0, 3), chunks=len(result.chunk_times),
                        request=request, attempt=attempt, error=result.error or ("" if result.usage_reported else "cut"))
        self.samples.append(sample)
        return sample
