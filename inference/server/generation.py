"""The engine requests behind one HTTP request: n choices per prompt, merged, observed, aborted on exit."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from inference.server.errors import APIError
from inference.server.metrics import ServerMetrics

FINISHED = object()  # end-of-stream marker on the merge queue


@dataclass(slots=True)
class Choice:
    """One engine request and what it has produced so far."""

    index: int
    request_id: str
    prompt_index: int
    stream: AsyncIterator
    text: list[str] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    num_output_tokens: int = 0
    finish_reason: str | None = None
    last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Generation:
    """Adds the engine requests, merges their streams, and aborts whatever is unfinished on close."""

    def __init__(self, engine, metrics: ServerMetrics, request_id: str, release: Callable[[], None]) -> None:
        self.engine, self.metrics, self.request_id = engine, metrics, request_id
        self.release = release
        self.prompt_lengths: list[int] = []
        self.choices: list[Choice] = []
        self.created = int(time.time())
        self.closed = False

    def add_prompt(self, prompt_ids: list[int], params_per_choice: list) -> None:
        """Start one engine request per choice of this prompt; engine ValueErrors become 400s."""
        prompt_index = len(self.prompt_lengths)
        self.prompt_lengths.append(len(prompt_ids))
        for params in params_per_choice:
            request_id = f"{self.request_id}-{len(self.choices)}"
            try:
                stream = self.engine.add_request(request_id, prompt_ids, params)
            except ValueError as error:
                raise APIError(400, str(error), param="prompt", code="invalid_prompt") from None
            except RuntimeError as error:  # the engine loop died
                raise APIError(503, str(error), code="engine_unavailable") from None
            self.choices.append(Choice(len(self.choices), request_id, prompt_index, stream))

    async def outputs(self) -> AsyncIterator[tuple[Choice, object]]:
        """(choice, RequestOutput) pairs from every choice as they arrive, with metrics observed."""
        try:
            async for choice, output in merge_streams(self.choices):
                self.record(choice, output)
                yield choice, output
        except Exception as error:
            from inference.async_engine import RequestFailed  # loaded with the engine; torch stays out of startup

            if isinstance(error, RequestFailed):  # this request alone: the engine goes on with the others
                self.metrics.failed.inc()
                raise APIError(500, f"generation failed: {error}", code="generation_failed") from error
            raise APIError(503, f"generation failed: the engine stopped ({error})", code="engine_error") from error

    async def run_to_end(self) -> None:
        """Consume every output (non-streaming responses)."""
        async for _ in self.outputs():
            pass

    def record(self, choice: Choice, output) -> None:
        """Fold one RequestOutput into its choice and the metrics."""
        now = time.monotonic()
        if output.token_ids:
            if choice.last_token_time is None:
                self.metrics.ttft.observe(max(output.first_token_time - output.arrival_time, 0.0))
            else:
                self.metrics.observe_token_gap(now - choice.last_token_time)
            choice.last_token_time = now
        choice.text.append(output.text)
        choice.logprobs.extend(output.logprobs or [])
        choice.num_output_tokens = output.num_output_tokens
        if output.finished:
            choice.finish_reason = output.finish_reason or "stop"
            self.metrics.observe_finished(choice.finish_reason, now - output.arrival_time)
            self.metrics.observe_phases(output, now)

    def usage(self) -> dict[str, int]:
        """OpenAI usage: each prompt counted once, every choice's output tokens."""
        prompt = sum(self.prompt_lengths)
        completion = sum(choice.num_output_tokens for choice in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def close(self) -> None:
        """Abort unfinished engine requests (frees their KV blocks) and leave the queue; idempotent."""
        if self.closed:
            return
        self.closed = True
        for choice in self.choices:
            if not choice.finished:
                self.engine.abort(choice.request_id)
                self.metrics.aborted.inc()
        self.release()


async def merge_streams(choices: list[Choice]) -> AsyncIterator[tuple[Choice, object]]:
    """Interleave the choices' output streams; stream errors propagate, pumps stop when the consumer does."""
    if len(choices) == 1:
        async for output in choices[0].stream:
            yield choices[0], output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for output in choice.stream:
                await queue.put((choice, output))
            await queue.put((choice, FINISHED))
        except Exception as error:  # handed to the consumer, which re-raises it
            await queue.put((choice, error))

    pumps = [asyncio.create_task(pump(choice)) for choice in choices]
    try:
        remaining = len(choices)
        while remaining:
            choice, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is FINISHED:
                remaining -= 1
            else:
                yield choice, item
    finally:
        for task in pumps:
            task.cancel()
