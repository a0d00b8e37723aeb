"""One streamed request against an OpenAI-compatible endpoint, timed the way `vllm bench serve` times it.

TTFT is the time to the first chunk that carries content, ITL the gaps between content chunks,
E2EL the time to the last content chunk; output tokens come from the final `usage` chunk
(`stream_options.include_usage`).
"""

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

from inference.bench.dataset import BenchPrompt

RETRYABLE_ERRORS = ("connection", "http_502", "http_503", "http_504")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server under test: `base_url` ends before `/v1`; `api` is "completions" or "chat"."""

    name: str
    base_url: str
    api: str = "completions"
    model: str | None = None
    api_key: str | None = None

    @property
    def url(self) -> str:
        """The generation URL for this endpoint's API."""
        path = "/v1/chat/completions" if self.api == "chat" else "/v1/completions"
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Per-request knobs shared by a whole run."""

    temperature: float = 0.0
    ignore_eos: bool = True
    timeout_s: float = 300.0
    retries: int = 0


@dataclass(slots=True)
class RequestResult:
    """The timeline of one request (perf_counter seconds) and what the server reported."""

    success: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    usage_reported: bool = False  # False: output_tokens counts content chunks (the server sent no usage)
    approx_input_tokens: int = 0
    generated_text: str = ""
    retries: int = 0


def build_payload(endpoint: Endpoint, prompt: BenchPrompt, options: RequestOptions) -> dict:
    """The JSON body of a streamed request with usage reporting on."""
    payload = {
        "model": endpoint.model,
        "max_tokens": prompt.max_tokens,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.ignore_eos:
        payload["ignore_eos"] = True
    if endpoint.api == "chat":
        payload["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        payload["prompt"] = prompt.text
    return payload


def chunk_content(data: dict) -> str:
    """The text a completions or chat chunk carries ("" when none)."""
    choices = data.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return choice["delta"].get("content") or ""
    return choice.get("text") or ""


def record_chunk(result: RequestResult, data: dict, now: float) -> None:
    """Fold one parsed SSE chunk into the request's timeline."""
    if "error" in data:
        result.error = "stream_error"
        return
    content = chunk_content(data)
    if content:
        if result.chunk_times:
            result.itl.append(now - result.chunk_times[-1])
        else:
            result.ttft = now - result.start
        result.chunk_times.append(now)
        result.generated_text += content
    usage = data.get("usage")
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens") or 0
        result.output_tokens = usage.get("completion_tokens") or 0
        result.usage_reported = True


async def read_stream(response: httpx.Response, result: RequestResult) -> None:
    """Consume `data: ...` lines until `[DONE]` or the end of the body."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        body = line[len("data:") :].strip()
        if body == "[DONE]":
            return
        record_chunk(result, json.loads(body), time.perf_counter())


def headers_for(endpoint: Endpoint) -> dict[str, str]:
    """Authorization header when the endpoint needs an API key."""
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


async def attempt(client: httpx.AsyncClient, endpoint: Endpoint, payload: dict, result: RequestResult) -> None:
    """One HTTP attempt; sets `result.error` to a kind ("http_429", "timeout", ...) on failure."""
    try:
        async with client.stream("POST", endpoint.url, json=payload, headers=headers_for(endpoint)) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"http_{response.status_code}"
                return
            await read_stream(response, result)
    except httpx.TimeoutException:
        result.error = "timeout"
    except httpx.TransportError:
        result.error = "connection"
    except json.JSONDecodeError:
        result.error = "bad_chunk"


async def send_request(
    client: httpx.AsyncClient, endpoint: Endpoint, prompt: BenchPrompt, options: RequestOptions
) -> RequestResult:
    """Send one streamed request (retrying before the first chunk if allowed) and time it."""
    result = RequestResult(approx_input_tokens=prompt.approx_input_tokens)
    payload = build_payload(endpoint, prompt, options)
    for attempt_index in range(options.retries + 1):
        result.retries, result.error = attempt_index, ""
        result.start = time.perf_counter()
        try:
            await asyncio.wait_for(attempt(client, endpoint, payload, result), options.timeout_s)
        except TimeoutError:
            result.error = "timeout"
        if result.chunk_times or result.error not in RETRYABLE_ERRORS:
            break
    return finish(result)


def finish(result: RequestResult) -> RequestResult:
    """Decide success and E2EL the way vLLM does: success means at least one content chunk. A server that
    reports no usage (llama-cpp-python's streams) gets its content chunks counted as output tokens: its
    chunks carry one token each."""
    if not result.error and not result.chunk_times:
        result.error = "no_content"
    if not result.usage_reported:
        result.output_tokens = len(result.chunk_times)
    result.success = not result.error
    if result.chunk_times:
        result.latency = result.chunk_times[-1] - result.start
    return result
