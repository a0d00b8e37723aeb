"""Response bodies of /v1/completions and /v1/chat/completions, whole or as Server-Sent Events."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from inference.server.errors import APIError, error_body
from inference.server.generation import Choice, Generation

log = logging.getLogger("inference.server")
SSE_DONE = "data: [DONE]\n\n"
# An SSE comment (clients ignore it) after this long without a token, e.g. during a long prefill: it keeps
# proxies' read timeouts and idle-connection reapers from cutting a stream that is only slow.
SSE_KEEPALIVE = ": keepalive\n\n"
KEEPALIVE_S = 10.0


def sse(data: dict) -> str:
    """One Server-Sent Event carrying a JSON object."""
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class TokenText:
    """Token ids → the strings logprobs report (special tokens kept)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


class CompletionAPI:
    """Shapes of /v1/completions (`text_completion` objects; legacy logprobs format)."""

    full_object = chunk_object = "text_completion"

    def __init__(self, token_text: TokenText) -> None:
        self.token_text = token_text

    def logprobs(self, entries: list, text_offset: int) -> dict:
        """{"tokens", "token_logprobs", "top_logprobs", "text_offset"} for a run of tokens."""
        tokens = [self.token_text(entry.token_id) for entry in entries]
        offsets = []
        for token in tokens:
            offsets.append(text_offset)
            text_offset += len(token)
        return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in entries],
                "top_logprobs": [{self.token_text(i): lp for i, lp in entry.top} for entry in entries],
                "text_offset": offsets}

    def stream_choices(self, choice: Choice, output) -> list[dict]:
        """The chunk choices one RequestOutput produces (none when it carries nothing)."""
        if not (output.text or output.finished or output.logprobs):
            return []
        logprobs = None
        if output.logprobs:
            offset = sum(len(text) for text in choice.text) - len(output.text)
            logprobs = self.logprobs(output.logprobs, offset)
        return [{"index": choice.index, "text": output.text, "logprobs": logprobs,
                 "finish_reason": choice.finish_reason}]

    def final_choice(self, choice: Choice) -> dict:
        logprobs = self.logprobs(choice.logprobs, 0) if choice.logprobs else None
        return {"index": choice.index, "text": "".join(choice.text), "logprobs": logprobs,
                "finish_reason": choice.finish_reason}


class ChatAPI:
    """Shapes of /v1/chat/completions (role chunk first, then content deltas)."""

    full_object, chunk_object = "chat.completion", "chat.completion.chunk"

    def __init__(self, token_text: TokenText) -> None:
        self.token_text = token_text

    def token_entry(self, token_id: int, logprob: float) -> dict:
        token = self.token_text(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def logprobs(self, entries: list) -> dict:
        """{"content": [{token, logprob, bytes, top_logprobs}]}."""
        return {"content": [{**self.token_entry(entry.token_id, entry.logprob),
                             "top_logprobs": [self.token_entry(i, lp) for i, lp in entry.top]}
                            for entry in entries]}

    def stream_choices(self, choice: Choice, output) -> list[dict]:
        pieces = []
        if len(choice.text) == 1:
            pieces.append({"index": choice.index, "delta": {"role": "assistant", "content": ""},
                           "logprobs": None, "finish_reason": None})
        if output.text or output.finished or output.logprobs:
            pieces.append({"index": choice.index, "delta": {"content": output.text} if output.text else {},
                           "logprobs": self.logprobs(output.logprobs) if output.logprobs else None,
                           "finish_reason": choice.finish_reason})
        return pieces

    def final_choice(self, choice: Choice) -> dict:
        return {"index": choice.index, "message": {"role": "assistant", "content": "".join(choice.text)},
                "logprobs": self.logprobs(choice.logprobs) if choice.logprobs else None,
                "finish_reason": choice.finish_reason}


def envelope(generation: Generation, model: str, object_name: str, choices: list[dict], **extra) -> dict:
    """The fields every response and chunk shares."""
    return {"id": generation.request_id, "object": object_name, "created": generation.created, "model": model,
            "choices": choices, **extra}


def full_response(generation: Generation, api, model: str) -> dict:
    """A finished non-streaming response with usage."""
    choices = [api.final_choice(choice) for choice in generation.choices]
    return envelope(generation, model, api.full_object, choices, usage=generation.usage())


async def with_keepalives(items: AsyncIterator, interval_s: float) -> AsyncIterator:
    """The items of `items`, and None each time `interval_s` passes without one (the wait is not cancelled)."""
    iterator = aiter(items)
    pending = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        pending.cancel()


async def event_stream(generation: Generation, api, model: str, include_usage: bool,
                       keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
    """SSE chunks as outputs arrive (a comment while none comes), an optional usage chunk, then `[DONE]`;
    closes the generation."""
    extra = {"usage": None} if include_usage else {}
    try:
        async for item in with_keepalives(generation.outputs(), keepalive_s):
            if item is None:
                yield SSE_KEEPALIVE
                continue
            choice, output = item
            for piece in api.stream_choices(choice, output):
                yield sse(envelope(generation, model, api.chunk_object, [piece], **extra))
        if include_usage:
            yield sse(envelope(generation, model, api.chunk_object, [], usage=generation.usage()))
        yield SSE_DONE
    except APIError as error:  # the engine failed mid-stream: the status line is long gone, say it in-band
        log.error("stream %s failed: %s", generation.request_id, error.message)
        yield sse(error_body(error))
        yield SSE_DONE
    finally:
        generation.close()
