"""What the engine hands back, and the per-request text stream (detokenizing, stop strings, deltas)."""
from __future__ import annotations

from dataclasses import dataclass, field

from inference.sampling import TokenLogprob


@dataclass(slots=True)
class RequestOutput:
    """One streaming update for a request: deltas since its previous update."""

    request_id: str
    text: str  # new text, complete UTF-8 characters only
    token_ids: list[int]  # new token ids
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None
    num_prompt_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprob] | None
    arrival_time: float  # time.monotonic()
    first_scheduled_time: float | None  # None while it waits for its first chunk
    first_token_time: float | None
    error: str | None = None  # why the engine failed this request (finish_reason "error"); others go on


@dataclass(slots=True)
class CompletionOutput:
    """A finished request, as returned by LLM.generate."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None  # set when finish_reason is "error"


@dataclass(slots=True)
class StepOutput:
    """What one LLMEngine.step did."""

    outputs: list[RequestOutput] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    num_preempted: int = 0
    elapsed: float = 0.0  # seconds for the whole step
    model_elapsed: float = 0.0  # seconds in the model forward + sampling; the rest is host-side overhead


class TextStream:
    """Detokenizes one request's output, cuts it at the first stop string, and hands out text deltas.

    While stop strings are set, the last `len(longest stop) - 1` characters are held back: they might be
    the start of a stop string that the next token completes.
    """

    def __init__(self, detokenizer, stop: list[str], include_stop: bool):
        self.detokenizer = detokenizer
        self.stop = stop
        self.include_stop = include_stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self.num_sent_chars = 0
        self.is_stopped = False  # a stop string was found; nothing more is added

    def push(self, token_id: int) -> bool:
        """Add one token's text; True when that completed a stop string (the text is then cut there)."""
        if self.detokenizer is None or self.is_stopped:
            return self.is_stopped
        searched_up_to = len(self.text)
        self.text += self.detokenizer.push(token_id)
        return self._cut_at_stop(max(0, searched_up_to - self.holdback))

    def flush(self) -> None:
        """Take whatever the detokenizer still holds (the request is finishing)."""
        if self.detokenizer is not None and not self.is_stopped:
            self.text += self.detokenizer.flush()

    def take_delta(self, finished: bool) -> str:
        end = len(self.text) if finished else max(self.num_sent_chars, len(self.text) - self.holdback)
        delta, self.num_sent_chars = self.text[self.num_sent_chars:end], end
        return delta

    def _cut_at_stop(self, search_from: int) -> bool:
        hits = [(index, s) for s in self.stop if (index := self.text.find(s, search_from)) >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        self.text = self.text[:index + len(stop) if self.include_stop else index]
        self.is_stopped = True
        return True
