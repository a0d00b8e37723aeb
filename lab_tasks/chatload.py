"""Streamed chat completions from N concurrent clients at the inference API, for the failover drill.

Each client sends one streamed request after the other through the product's bench client
(inference.bench.client), a new connection each, as a client arriving after a failover would. A request
that fails before its first chunk is retried after a short pause, as OpenAI clients retry; one that fails
after it (a stream cut by the balancer that died) cannot be. Every attempt becomes a drill Sample.

A request in flight through the balancer that dies often gets no error at all: its balancer can no longer
answer from the VIP and the client sends nothing that would draw a reset, so it hangs until a timeout.
Once the drill marks the break, an attempt that was in flight then and makes no progress for STALL_S is
given up as broken, so its client goes on sending new requests. A prober starts a one-token request every
PROBE_INTERVAL_S without waiting for the last one: new requests keep arriving at the VIP even while every
client is stuck, and they time the outage. Bounded in time (the drill's duration) and in count
(`max_attempts`, MAX_PROBES_IN_FLIGHT).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx

from inference.bench.client import Endpoint, RequestOptions, RequestResult, attempt, build_payload, finish
from inference.bench.dataset import BenchPrompt
from lab_tasks.drill import LoadThread, Sample, summarize_streams

PROMPT = "Count from one to twenty in words, separated by commas."
CONNECT_TIMEOUT_S = 0.5  # a dead balancer shows as a refused or unanswered connect, not a long wait
SILENCE_TIMEOUT_S = 15.0  # our server sends an SSE keepalive every 10 s: a stream silent for longer is dead
REQUEST_TIMEOUT_S = 60.0
STALL_S = 2.0  # an attempt in flight at the break that gets nothing for this long went through the dead balancer
RETRY_PAUSE_S = 0.1
PROBE_INTERVAL_S = 0.1
MAX_PROBES_IN_FLIGHT = 32
POLL_S = 0.05


@dataclasses.dataclass(eq=False)
class InFlight:
    """One attempt being sent: its live result (chunks arrive in it) and its task."""

    result: RequestResult
    task: asyncio.Task
    stalled: bool = False


class ChatLoad(LoadThread):
    """`clients` concurrent streamed chat completions at `base_url` until stopped, the deadline or `max_attempts`."""

    join_timeout_s = REQUEST_TIMEOUT_S + 5

    def __init__(self, base_url: str, model: str, clients: int, max_tokens: int, duration_s: float,
                 api_key: str | None = None, retries: int = 2, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__()
        self.endpoint = Endpoint("drill", base_url, api="chat", model=model, api_key=api_key)
        self.prompt = BenchPrompt(PROMPT, approx_input_tokens=len(PROMPT.split()), max_tokens=max_tokens)
        self.probe_prompt = dataclasses.replace(self.prompt, max_tokens=1)
        self.options = RequestOptions(temperature=0.0, ignore_eos=True, timeout_s=REQUEST_TIMEOUT_S, retries=0)
        self.clients, self.retries, self.transport = clients, retries, transport
        self.duration_s = duration_s
        self.max_attempts = (clients + 1) * int(duration_s / min(RETRY_PAUSE_S, PROBE_INTERVAL_S) + 1)
        self._requests = 0
        self._in_flight: set[InFlight] = set()
        self._break_until: float | None = None  # attempts sent before this (load clock) may be broken

    def mark_break(self, t: float, lag_s: float = 0.0) -> None:
        """The MASTER was broken at `t` (load clock); the break takes effect within `lag_s`."""
        self._break_until = t + lag_s

    def summary(self, samples: list[Sample], t_break: float | None, t_moved: float | None) -> dict:
        """requests, failed, broken_streams, retries, outage_s, ... of the streams."""
        return summarize_streams(samples, t_break, t_moved)

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        timeout = httpx.Timeout(SILENCE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False,
                                     transport=self.transport) as http:
            workers = [asyncio.create_task(self._client(http, self.prompt)) for _ in range(self.clients)]
            workers.append(asyncio.create_task(self._prober(http)))
            while not all(w.done() for w in workers):
                if self._abort_event.is_set():
                    for worker in workers:
                        worker.cancel()
                self._give_up_stalled()
                await asyncio.wait(workers, timeout=POLL_S)
            for worker in workers:
                if not worker.cancelled() and worker.exception():
                    raise worker.exception()

    def _give_up_stalled(self) -> None:
        """Cancel attempts in flight at the break that got nothing for STALL_S since (see the module doc)."""
        if self._break_until is None:
            return
        for sent in list(self._in_flight):
            started = sent.result.start - self._t0
            last = max([sent.result.start, *sent.result.chunk_times[-1:]]) - self._t0
            if started < self._break_until and self.now() - max(last, self._break_until) > STALL_S:
                sent.stalled = True
                sent.task.cancel()

    def _more(self, deadline: float) -> bool:
        return (not self._stop_event.is_set() and len(self.samples) < self.max_attempts
                and time.perf_counter() < deadline)

    async def _client(self, http: httpx.AsyncClient, prompt: BenchPrompt) -> None:
        deadline = self._t0 + self.duration_s
        while self._more(deadline):
            request, self._requests = self._requests, self._requests + 1
            for attempt_index in range(self.retries + 1):
                sample = await self._attempt(http, prompt, request, attempt_index)
                if sample.ok or sample.chunks or sample.error == "stalled" or not self._more(deadline):
                    break
                await asyncio.sleep(RETRY_PAUSE_S)
            if not sample.ok:
                await asyncio.sleep(RETRY_PAUSE_S)  # a client whose request failed does not spin

    async def _prober(self, http: httpx.AsyncClient) -> None:
        """Start a one-token request every PROBE_INTERVAL_S, however long the earlier ones take."""
        deadline = self._t0 + self.duration_s
        probes: set[asyncio.Task] = set()
        try:
            while self._more(deadline):
                if len(probes) < MAX_PROBES_IN_FLIGHT:
                    request, self._requests = self._requests, self._requests + 1
                    probe = asyncio.create_task(self._attempt(http, self.probe_prompt, request, 0, probe=True))
                    probes.add(probe)
                    probe.add_done_callback(probes.discard)
                await asyncio.sleep(PROBE_INTERVAL_S)
            if probes:
                await asyncio.wait(probes)
        finally:
            for probe in probes:
                probe.cancel()

    async def _attempt(self, http: httpx.AsyncClient, prompt: BenchPrompt, request: int, attempt_index: int,
                       probe: bool = False) -> Sample:
        result = RequestResult(approx_input_tokens=prompt.approx_input_tokens, retries=attempt_index)
        payload = build_payload(self.endpoint, prompt, self.options)
        result.start = time.perf_counter()
        sent = InFlight(result, asyncio.create_task(attempt(http, self.endpoint, payload, result)))
        self._in_flight.add(sent)
        try:
            await asyncio.wait_for(asyncio.shield(sent.task), REQUEST_TIMEOUT_S)
        except TimeoutError:
            sent.task.cancel()
            result.error = "timeout"
        except asyncio.CancelledError:
            if not sent.stalled:
                sent.task.cancel()
                raise
            result.error = "stalled"
        finally:
            self._in_flight.discard(sent)
        finish(result)
        # A stream that ends without its final usage chunk was cut short, even when no error was raised.
        cut = "" if result.usage_reported else "cut"
        sample = Sample(t=round(result.start - self._t0, 3), ok=result.success and result.usage_reported,
                        end=round(time.perf_counter() - self._t0, 3), chunks=len(result.chunk_times),
                        request=request, attempt=attempt_index, error=result.error or cut, probe=probe)
        self.samples.append(sample)
        return sample
