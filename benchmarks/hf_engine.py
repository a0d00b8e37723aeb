"""A naive Hugging Face deployment as an engine: `generate` + a text streamer, one request at a time.

`HFEngine` has the interface the OpenAI server drives (`AsyncLLMEngine`'s: add_request/abort/stats/start/stop),
so `benchmarks.hf_server` serves it with our own HTTP layer and only the generation differs. Requests
queue in arrival order; a worker thread runs `LlamaForCausalLM.generate` for one of them at a time (no
batching, no paged KV cache), which is what a plain transformers server does.
Weights load with strict key checking (`model_from_checkpoint`, `load_hf`): a baseline that silently runs on
randomly initialised layers would make every ratio against it meaningless.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList, TextStreamer

from inference.config import SamplingParams
from inference.llm_engine import EngineStats
from inference.outputs import RequestOutput


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_keys(missing: list[str], unexpected: list[str], tied: bool, source) -> None:
    """ValueError unless the checkpoint filled every weight of the model and nothing else (a tied head's
    weight is the embedding's, so it may be absent)."""
    missing = [key for key in missing if not (tied and key == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{source} does not match LlamaForCausalLM: missing {missing[:8]}, unexpected "
                         f"{list(unexpected)[:8]}; the HF baseline would run on random weights")


def model_from_checkpoint(path: str | Path, dtype: str = "float32", device: str = "cpu") -> LlamaForCausalLM:
    """The checkpoint our engine loads (GGUF or HF dir, through inference.loaders), in LlamaForCausalLM."""
    from transformers import LlamaConfig

    from inference.loaders import load_checkpoint

    checkpoint = load_checkpoint(path)
    config = LlamaConfig(**{k: v for k, v in checkpoint.config.to_dict().items() if v is not None})
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(checkpoint.state_dict, strict=False)
    check_keys(result.missing_keys, result.unexpected_keys, config.tie_word_embeddings, path)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device=device, dtype=DTYPES[dtype]).eval()


def load_hf(path: str | Path) -> tuple[LlamaForCausalLM, object]:
    """(fp32 model, HF tokenizer) from an HF checkpoint dir or a .gguf file (transformers dequantizes it)."""
    path = Path(path)
    where, extra = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model, info = LlamaForCausalLM.from_pretrained(where, dtype=torch.float32, output_loading_info=True, **extra)
    unexpected = sorted(info["unexpected_keys"]) + sorted(map(str, info["mismatched_keys"]))
    check_keys(sorted(info["missing_keys"]), unexpected, model.config.tie_word_embeddings, path)
    return model.eval(), tokenizer


class TemplateTokenizer:
    """An HF tokenizer with our Tokenizer's calls (chat templates render to text, as the server expects)."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


@dataclass(slots=True)
class Job:
    """One queued request and the asyncio queue its outputs go to."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    outputs: asyncio.Queue
    arrival_time: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    num_output_tokens: int = 0


class JobStreamer(TextStreamer):
    """TextIteratorStreamer's text release (whole words), handing each piece out with its token ids."""

    def __init__(self, tokenizer, on_piece) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_piece = on_piece
        self.pending: list[int] = []

    def put(self, value) -> None:
        if not self.next_tokens_are_prompt:
            self.pending.extend(value.reshape(-1).tolist())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.pending or text:
            self.on_piece(text, self.pending)
        self.pending = []


class Cancelled(StoppingCriteria):
    """Stops `generate` once the request is aborted."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def check_supported(params: SamplingParams) -> None:
    """ValueError (→ 400) for what the baseline does not implement."""
    unsupported = {"stop": params.stop, "stop_token_ids": params.stop_token_ids,
                   "logprobs": params.logprobs is not None, "presence_penalty": params.presence_penalty,
                   "frequency_penalty": params.frequency_penalty}
    named = [name for name, value in unsupported.items() if value]
    if named:
        raise ValueError(f"{', '.join(named)}: not supported by the HF baseline server")


def generate_kwargs(params: SamplingParams) -> dict:
    """`generate` arguments for one request; ignore_eos forbids EOS until max_tokens (min_new_tokens)."""
    kwargs = {"max_new_tokens": params.max_tokens, "min_new_tokens": params.max_tokens if params.ignore_eos else 0,
              "do_sample": not params.is_greedy, "repetition_penalty": params.repetition_penalty}
    if not params.is_greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                      min_p=params.min_p or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class HFEngine:
    """transformers generation behind the engine interface of the OpenAI server; one request at a time."""

    IDLE_TICK_S = 0.2  # an idle worker wakes this often (keeps last_step_time fresh for /health)

    def __init__(self, model: LlamaForCausalLM, hf_tokenizer) -> None:
        self.model, self.hf_tokenizer = model, hf_tokenizer
        self.tokenizer = TemplateTokenizer(hf_tokenizer)
        self.model_config = model.config
        self.max_model_len = model.config.max_position_embeddings
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.jobs: dict[str, Job] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.error: str | None = None  # why the worker thread died, if it did
        self.last_step_time = time.monotonic()
        self.prompt_tokens_total = self.generation_tokens_total = 0

    @classmethod
    def from_path(cls, path: str | Path) -> HFEngine:
        return cls(*load_hf(path))

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="hf-generate", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Abort everything and join the worker."""
        for request_id in list(self.jobs):
            self.abort(request_id)
        self._stopping = True
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams | None = None
                    ) -> AsyncIterator[RequestOutput]:
        """Queue a request; ValueError now for what the baseline cannot do."""
        if not self.is_alive:
            raise RuntimeError("engine is not running")
        params = params or SamplingParams()
        check_supported(params)
        if not prompt_ids or len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt + max_tokens must be 1..{self.max_model_len} tokens")
        job = Job(request_id, list(prompt_ids), params, asyncio.Queue())
        self.jobs[request_id] = job
        self._queue.put(job)
        return self._stream(job)

    def check_fits_together(self, lengths: list[int]) -> None:
        """Nothing to check: one generation at a time in HF's own cache, so sequences never share a budget
        (the server checks each against max_model_len)."""

    def abort(self, request_id: str) -> None:
        job = self.jobs.get(request_id)
        if job is not None:
            job.cancelled.set()

    def stats(self) -> EngineStats:
        jobs = list(self.jobs.values())  # the worker thread removes finished ones
        waiting = sum(job.first_scheduled_time is None for job in jobs)
        return EngineStats(num_running=len(jobs) - waiting, num_waiting=waiting, kv_cache_usage=0.0,
                           num_free_blocks=0, num_total_blocks=0, prefix_cache_queries=0, prefix_cache_hits=0,
                           num_steps=self.generation_tokens_total, last_step_time=self.last_step_time,
                           prompt_tokens_total=self.prompt_tokens_total,
                           generation_tokens_total=self.generation_tokens_total, is_alive=self.is_alive)

    @staticmethod
    async def _stream(job: Job) -> AsyncIterator[RequestOutput]:
        while True:
            item = await job.outputs.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    # ---- the worker thread ----

    def _run(self) -> None:
        try:
            self._serve_queue()
        except BaseException as error:  # the server's watchdog reads it and exits non-zero
            self.error = f"{type(error).__name__}: {error}"
            raise

    def _serve_queue(self) -> None:
        while not self._stopping:
            self.last_step_time = time.monotonic()
            try:
                job = self._queue.get(timeout=self.IDLE_TICK_S)
            except queue.Empty:
                continue
            try:
                self._generate(job)
            except Exception as error:  # this request fails; the server keeps serving the next
                self._send(job, error)
            finally:
                self.jobs.pop(job.request_id, None)

    def _generate(self, job: Job) -> None:
        if job.cancelled.is_set():  # aborted while it waited
            self._send(job, self._output(job, "", [], "abort"))
            return
        job.first_scheduled_time = time.monotonic()
        self.prompt_tokens_total += len(job.prompt_ids)
        if job.params.seed is not None:
            torch.manual_seed(job.params.seed)
        streamer = JobStreamer(self.hf_tokenizer, lambda text, ids: self._piece(job, text, ids))
        input_ids = torch.tensor([job.prompt_ids])
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([Cancelled(job.cancelled)]),
                                pad_token_id=next(iter(self.eos_token_ids), 0), **generate_kwargs(job.params))
        self._send(job, self._output(job, "", [], self._finish_reason(job)))

    def _piece(self, job: Job, text: str, token_ids: list[int]) -> None:
        """A streamed piece: count its tokens and pass it on (not finished yet: generate has not returned)."""
        now = time.monotonic()
        self.last_step_time = now
        if token_ids:
            job.first_token_time = job.first_token_time or now
            job.num_output_tokens += len(token_ids)
            self.generation_tokens_total += len(token_ids)
        self._send(job, self._output(job, text, token_ids, None))

    def _finish_reason(self, job: Job) -> str:
        if job.cancelled.is_set():
            return "abort"
        return "length" if job.num_output_tokens >= job.params.max_tokens else "stop"

    @staticmethod
    def _output(job: Job, text: str, token_ids: list[int], finish_reason: str | None) -> RequestOutput:
        return RequestOutput(request_id=job.request_id, text=text, token_ids=token_ids,
                             finished=finish_reason is not None, finish_reason=finish_reason,
                             num_prompt_tokens=len(job.prompt_ids), num_output_tokens=job.num_output_tokens,
                             logprobs=None, arrival_time=job.arrival_time,
                             first_scheduled_time=job.first_scheduled_time, first_token_time=job.first_token_time)

    def _send(self, job: Job, item) -> None:
        self._loop.call_soon_threadsafe(job.outputs.put_nowait, item)
