"""OpenAI request bodies (pydantic) and their translation into engine SamplingParams.

Every number is bounded by what the engine can take (the bounds show in /openapi.json); floats must be finite
(Python's JSON parser reads NaN and Infinity); types are strict, as OpenAI's are (no "16" or 16.0 for an integer,
no 0 for a boolean). Unknown fields are ignored (as vLLM does); fields we would
silently get wrong are refused instead. Limits the operator sets (prompts, messages, characters) and those
of the loaded model (context length, vocabulary) are checked by the routes.
"""

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from inference.config import INT32_MAX, MAX_LOGPROBS, MAX_STOP_STRING_CHARS, SamplingParams

MAX_STOP_SEQUENCES = 4
MAX_STOP_TOKEN_IDS = 64
MAX_CHOICES = 64
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # OpenAI's seed range; choice i samples with seed + i

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]
Item = TypeVar("Item")
NonEmpty = Annotated[list[Item], Field(min_length=1)]


STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(STRICT, extra="ignore")

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices to generate for each prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | list[StopString] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} strings; generation stops before the first one")
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS,
                                                 description="token ids that end generation (below the vocab size)")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX, description="-1 or 0: off")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    user: str | None = Field(None, max_length=256)

    echo: bool = False
    suffix: str | None = None
    logit_bias: dict | None = None
    tools: list | None = None
    best_of: int | None = None
    response_format: dict | None = None

    @field_validator("echo", "suffix", "logit_bias", "tools")
    @classmethod
    def refuse_unsupported(cls, value, info: ValidationInfo):
        """Refuse features we do not implement rather than silently ignore them."""
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def refuse_best_of(cls, value):
        if value not in (None, 1):
            raise ValueError("best_of > 1 is not supported by this server; use n")
        return value

    @field_validator("response_format")
    @classmethod
    def refuse_structured_output(cls, value):
        if value and value.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported by this server")
        return value

    @field_validator("stop")
    @classmethod
    def check_stop(cls, stop):
        """At most 4 stop strings."""
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int, choice_index: int, logprobs: int | None) -> SamplingParams:
        """Engine parameters for one choice; choice i of a seeded request uses seed + i."""
        optional = {
            "temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
        }
        return SamplingParams(
            **{key: value for key, value in optional.items() if value is not None},
            top_k=max(self.top_k or 0, 0),
            max_tokens=max_tokens,
            stop=list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            seed=None if self.seed is None else self.seed + choice_index,
            logprobs=logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | NonEmpty[str] | NonEmpty[TokenId] | NonEmpty[NonEmpty[TokenId]] = Field(
        description="a text, a list of texts, a list of token ids or a list of token-id lists")
    max_tokens: int | None = Field(16, ge=1, le=INT32_MAX,
                                   description="at most the model's context length minus the prompt")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("prompt", mode="before")
    @classmethod
    def check_prompt(cls, prompt):
        """No empty prompt lists and no empty token lists (said plainly, before the union's four complaints)."""
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("prompt must not be an empty list")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: texts or token-id lists."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict[str, str]:
        """{"role", "content"} with text parts joined, as chat templates expect."""
        content = self.content if isinstance(self.content, str | None) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX, description="deprecated: use max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX,
                                              description="at most the model's context length minus the prompt")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @property
    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens wins over the deprecated max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """Engine logprobs count: None unless logprobs is true (then top_logprobs, default 0)."""
        return (self.top_logprobs or 0) if self.logprobs else None
