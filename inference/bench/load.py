"""Load generation: a fixed number of concurrent clients, or Poisson arrivals at a request rate.

A run is bounded by a prompt count and a wall-clock limit: once `max_duration_s` has passed no new
request starts, and the ones in flight finish. Warm-up requests run first and are not measured.
"""

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from inference.bench.client import Endpoint, RequestOptions, RequestResult, headers_for, send_request
from inference.bench.dataset import BenchPrompt
from inference.bench.metrics import calculate_metrics, max_gap

OnResult = Callable[[RequestResult], None]


@dataclass(frozen=True, slots=True)
class Load:
    """One load level: `concurrency` clients in a closed loop, or Poisson arrivals at `request_rate`/s."""

    concurrency: int | None = None
    request_rate: float | None = None
    num_prompts: int = 100
    max_duration_s: float = 600.0
    seed: int = 0

    @property
    def label(self) -> str:
        """"c8" or "r2.5" (used in tables and plots)."""
        return f"c{self.concurrency}" if self.concurrency else f"r{self.request_rate:g}"


@dataclass(slots=True)
class RunOutcome:
    """Everything measured in one run: per-request results and the summary metrics."""

    endpoint: str
    load: Load
    results: list[RequestResult]
    metrics: dict


async def closed_loop(send: Callable, prompts: list[BenchPrompt], concurrency: int, deadline: float) -> list:
    """`concurrency` workers, each sending its next prompt as soon as its last one finished."""
    queue = iter(prompts)
    results: list[RequestResult] = []

    async def worker() -> None:
        for prompt in queue:
            if time.perf_counter() >= deadline:
                return
            results.append(await send(prompt))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def poisson_arrivals(send: Callable, prompts: list[BenchPrompt], rate: float, deadline: float, seed: int) -> list:
    """Start requests with exponential gaps (mean 1/rate seconds); an infinite rate starts them all at once."""
    rng = random.Random(seed)
    tasks = []
    for prompt in prompts:
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(send(prompt)))
        if rate != float("inf"):
            await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def run_load(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    prompts: list[BenchPrompt],
    load: Load,
    options: RequestOptions,
    on_result: OnResult = lambda result: None,
) -> tuple[list[RequestResult], float, float]:
    """Drive one load level; returns the results and the run's start and end (perf_counter)."""

    async def send(prompt: BenchPrompt) -> RequestResult:
        result = await send_request(client, endpoint, prompt, options)
        on_result(result)
        return result

    start = time.perf_counter()
    deadline = start + load.max_duration_s
    if load.concurrency:
        results = await closed_loop(send, prompts, load.concurrency, deadline)
    else:
        results = await poisson_arrivals(send, prompts, load.request_rate, deadline, load.seed)
    return results, start, time.perf_counter()


async def benchmark_endpoint(
    endpoint: Endpoint,
    prompts: Iterator[BenchPrompt],
    loads: list[Load],
    options: RequestOptions,
    warmup: int = 0,
    goodput_slos_ms: dict[str, float] | None = None,
    on_result: OnResult = lambda result: None,
) -> list[RunOutcome]:
    """Warm up, then run every load level in turn, each on fresh prompts from the stream."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_s), limits=limits) as client:
        endpoint = await resolve_model(client, endpoint)
        warmup_prompts = list(itertools.islice(prompts, warmup))
        await asyncio.gather(*(send_request(client, endpoint, p, options) for p in warmup_prompts))
        outcomes = []
        for load in loads:
            batch = list(itertools.islice(prompts, load.num_prompts))
            results, start, end = await run_load(client, endpoint, batch, load, options, on_result)
            metrics = calculate_metrics(results, end - start, goodput_slos_ms)
            metrics["max_gap_s"] = max_gap(results, start, end)
            outcomes.append(RunOutcome(endpoint.name, load, results, metrics))
    return outcomes


async def resolve_model(client: httpx.AsyncClient, endpoint: Endpoint) -> Endpoint:
    """Fill in the model name from `GET /v1/models` when the user gave none."""
    if endpoint.model:
        return endpoint
    response = await client.get(endpoint.base_url.rstrip("/") + "/v1/models", headers=headers_for(endpoint))
    response.raise_for_status()
    return dataclasses.replace(endpoint, model=response.json()["data"][0]["id"])
