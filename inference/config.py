"""Configuration dataclasses: the model's shape, the runtime's memory budget, one request's sampling.

Every class validates itself on construction and raises ValueError on bad input (never assert).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ROPE_SCALING_TYPES = ("llama3", "linear")
DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", *DTYPES)

# What the sampler can take: torch.Generator.manual_seed reads a seed as a signed or unsigned 64-bit integer;
# token counts and top_k become int32/int64 tensors; a stop string is searched in the text after every token.
SEED_MIN, SEED_MAX = -2**63, 2**64 - 1
INT32_MAX = 2**31 - 1
MAX_LOGPROBS = 20
MAX_STOP_STRING_CHARS = 256
MIN_TEMPERATURE = 1e-5  # below this, softmax(logits / t) overflows: sample greedily instead (as vLLM does)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _known_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A Llama-architecture decoder's shape, with Hugging Face config.json field names."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3"|"linear", "factor": ..., ...}
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self._validate()

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")
        _require(self.num_attention_heads % self.num_key_value_heads == 0,
                 "num_attention_heads must be a multiple of num_key_value_heads")
        _require(self.head_dim % 2 == 0, "head_dim must be even (rotary embedding)")
        _require(self.rms_norm_eps > 0 and self.rope_theta > 0, "rms_norm_eps and rope_theta must be > 0")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            _require(rope_type in ROPE_SCALING_TYPES + ("default",),
                     f"rope_scaling type {rope_type!r} not supported (supported: {ROPE_SCALING_TYPES})")

    @property
    def eos_token_ids(self) -> set[int]:
        """EOS ids as a set (config.json may hold one id or a list)."""
        if self.eos_token_id is None:
            return set()
        if isinstance(self.eos_token_id, int):
            return {self.eos_token_id}
        return set(self.eos_token_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; unknown keys are ignored.

        Accepts transformers>=5's `rope_parameters` as well as the older `rope_theta` / `rope_scaling`.
        """
        data = dict(data)
        rope_parameters = data.pop("rope_parameters", None)
        if rope_parameters:
            data.setdefault("rope_theta", rope_parameters.get("rope_theta", 10000.0))
            if rope_parameters.get("rope_type", "default") != "default":
                data.setdefault("rope_scaling", rope_parameters)
        try:
            return cls(**_known_fields(cls, data))
        except TypeError as error:  # a required field is missing
            raise ValueError(f"bad model config: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Runtime parameters: batch limits, paged-KV memory budget, device and dtype.

    The KV budget is `kv_cache_bytes` when set, otherwise `kv_cache_memory_fraction` of the memory that is
    free at start-up (host RAM on CPU, device memory on CUDA). The cache never grows beyond what
    `max_num_seqs` sequences of `max_model_len` tokens can use. `kv_cache_dtype` "auto" stores keys and
    values in float16 when the model runs in float32 on the CPU (as llama.cpp's default f16 cache: half the
    bytes that decode attention reads, twice the tokens per budget) and in the model's dtype otherwise.
    """

    max_num_seqs: int = 16  # requests decoded together in one step
    max_num_batched_tokens: int = 512  # tokens (prefill + decode) per step
    kv_block_size: int = 16  # tokens per KV block
    kv_cache_memory_fraction: float = 0.1
    kv_cache_bytes: int | None = None  # overrides kv_cache_memory_fraction when set
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    device: str = "cpu"
    dtype: str = "float32"
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # torch.set_num_threads on CPU; None: leave torch's setting

    def __post_init__(self) -> None:
        _require(self.max_num_seqs > 0, "max_num_seqs must be > 0")
        _require(self.max_num_batched_tokens >= self.max_num_seqs,
                 "max_num_batched_tokens must be >= max_num_seqs (every running sequence decodes each step)")
        _require(self.kv_block_size > 0, "kv_block_size must be > 0")
        _require(0 < self.kv_cache_memory_fraction <= 1, "kv_cache_memory_fraction must be in (0, 1]")
        _require(self.kv_cache_bytes is None or self.kv_cache_bytes > 0, "kv_cache_bytes must be > 0")
        _require(self.max_model_len is None or self.max_model_len > 0, "max_model_len must be > 0")
        _require(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES,
                 f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        _require(self.num_threads is None or self.num_threads > 0, "num_threads must be > 0")

    def resolved_kv_cache_dtype(self) -> str:
        """The dtype the KV cache is stored in ("auto" resolved, see the class docstring)."""
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        return "float16" if self.dtype == "float32" and self.device.split(":")[0] == "cpu" else self.dtype

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from an engine dir's "runtime" dict (unknown keys ignored)."""
        return cls(**_known_fields(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> EngineConfig:
        """A copy with `overrides` applied; None values are ignored; unknown keys raise ValueError."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        _require(not unknown, f"unknown engine options: {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def resolve_max_model_len(self, model_config: ModelConfig) -> int:
        return min(self.max_model_len or model_config.max_position_embeddings,
                   model_config.max_position_embeddings)


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens and when it stops."""

    temperature: float = 1.0  # 0 (below MIN_TEMPERATURE) = greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # top-N logprobs per output token
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")
        _require(self.temperature >= 0, "temperature must be >= 0")
        _require(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _require(_is_int(self.top_k) and 0 <= self.top_k <= INT32_MAX,
                 f"top_k must be an int in [0, {INT32_MAX}] (0 = off)")
        _require(0 <= self.min_p <= 1, "min_p must be in [0, 1]")
        _require(self.repetition_penalty > 0, "repetition_penalty must be > 0")
        _require(-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]")
        _require(-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]")
        _require(_is_int(self.max_tokens) and 0 < self.max_tokens <= INT32_MAX,
                 f"max_tokens must be an int in [1, {INT32_MAX}]")
        _require(all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS for s in self.stop),
                 f"stop strings must be non-empty strings of at most {MAX_STOP_STRING_CHARS} characters")
        _require(all(_is_int(t) and 0 <= t <= INT32_MAX for t in self.stop_token_ids),
                 "stop_token_ids must be token ids (ints >= 0)")
        _require(self.seed is None or (_is_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX),
                 f"seed must be an int in [{SEED_MIN}, {SEED_MAX}] (64 bits)")
        _require(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
                 f"logprobs must be an int in [0, {MAX_LOGPROBS}]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
