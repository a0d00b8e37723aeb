"""The engine, top-down: LLMEngine.step() = schedule → run the model → post-process each sequence.

Three front doors share it:
- `LLM(path).generate(prompts, params)`: offline batch generation;
- `AsyncLLMEngine`: a background thread steps the engine and streams RequestOutputs into asyncio queues;
- `LLMEngine` itself, for callers that drive `step()` by hand.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.block_manager import BlockManager
from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.outputs import CompletionOutput, RequestOutput, StepOutput, TextStream
from inference.runner import ModelRunner, plan_num_blocks
from inference.sampling import TokenLogprob
from inference.scheduler import Scheduler
from inference.sequence import Sequence


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    num_free_blocks: int
    num_total_blocks: int
    prefix_cache_queries: int  # blocks looked up in the prefix cache
    prefix_cache_hits: int
    num_steps: int
    last_step_time: float  # time.monotonic() of the latest step (or idle tick of the async loop)
    prompt_tokens_total: int
    generation_tokens_total: int
    is_alive: bool


@dataclass(slots=True)
class _Request:
    seq: Sequence
    stream: TextStream
    logprobs: list[TokenLogprob] | None


class LLMEngine:
    """Owns the scheduler, block manager and model runner; `step()` advances every active request."""

    def __init__(self, model: torch.nn.Module, tokenizer, engine_config: EngineConfig,
                 model_config: ModelConfig | None = None):
        self.model_config = model_config or model.config
        self.config = engine_config
        self.tokenizer = tokenizer
        self.max_model_len = engine_config.resolve_max_model_len(self.model_config)
        num_blocks = plan_num_blocks(self.model_config, engine_config, self.max_model_len)
        self.block_manager = BlockManager(num_blocks, engine_config.kv_block_size,
                                          engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(engine_config, self.block_manager)
        self.runner = ModelRunner(model, self.model_config, engine_config, num_blocks)
        self.eos_token_ids = self.model_config.eos_token_ids | set(getattr(tokenizer, "eos_token_ids", set()))
        self.requests: dict[str, _Request] = {}
        self.num_steps = 0
        self.last_step_time = time.monotonic()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._stepping = threading.Lock()  # held during step(): a second stepping thread is a bug

    @classmethod
    def from_path(cls, path: str | Path, **overrides) -> LLMEngine:
        """From an engine dir (inference.build), a .gguf file or an HF checkpoint dir."""
        return cls(*load_model(path, **overrides))

    # ---- requests in ----

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a request that could never run."""
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if not all(0 <= t < self.model_config.vocab_size for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.model_config.vocab_size})")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_token_ids)} tokens; max_model_len is {self.max_model_len}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        longest = min(len(prompt_token_ids) + params.max_tokens, self.max_model_len)
        if self.block_manager.blocks_for(longest) > self.block_manager.num_blocks:
            raise ValueError(f"request needs up to {longest} tokens of KV cache but the cache holds "
                             f"{self.block_manager.num_blocks * self.block_manager.block_size}: it can never fit")

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> Sequence:
        """Queue a request (arrival_time: time.monotonic() when it reached the server; default now)."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already active")
        prompt_token_ids = self.tokenize(prompt)
        self.validate(prompt_token_ids, params)
        seq = Sequence(request_id, prompt_token_ids, params, arrival_time)
        detokenizer = self._detokenizer()
        self.requests[request_id] = _Request(seq, TextStream(detokenizer, params.stop,
                                                             params.include_stop_str_in_output),
                                             [] if params.logprobs is not None else None)
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt_token_ids)
        return seq

    def _detokenizer(self):
        if self.tokenizer is None:
            return None
        from inference.tokenizer import IncrementalDetokenizer

        return IncrementalDetokenizer(self.tokenizer)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free all its KV blocks; None if it is not active."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.finish(request.seq, "abort")
        self.runner.release(request_id)
        return self._output(request, [], [], finished=True)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- one step ----

    def step(self) -> StepOutput:
        """Schedule, run the model once over every scheduled token, and post-process the new tokens.

        One thread steps an engine; a second one (say, `LLM.generate` on an engine an AsyncLLMEngine
        drives) gets a RuntimeError instead of corrupting the scheduler's state.
        """
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError("LLMEngine.step called while another thread is stepping this engine")
        try:
            return self._step()
        finally:
            self._stepping.release()

    def _step(self) -> StepOutput:
        start = time.monotonic()
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty and self.scheduler.waiting and not self.scheduler.running:
            raise RuntimeError("scheduler is stuck: nothing runs and the oldest waiting request cannot start")
        result = StepOutput(num_preempted=len(scheduled.preempted))
        if not scheduled.is_empty:
            run_start = time.monotonic()
            ran = self.runner.run(scheduled.chunks)
            result.model_elapsed = time.monotonic() - run_start - ran.prepare_seconds
            for chunk in scheduled.chunks:
                self._count_tokens(result, chunk)
                chunk.seq.num_computed_tokens += chunk.num_new_tokens
                self.block_manager.cache_computed_blocks(chunk.seq)
            result.outputs = [self._postprocess(seq, token_id, logprob)
                              for seq, token_id, logprob in zip(ran.seqs, ran.token_ids, ran.logprobs)]
        self.num_steps += 1
        self.last_step_time = time.monotonic()
        result.elapsed = self.last_step_time - start
        return result

    @staticmethod
    def _count_tokens(result: StepOutput, chunk) -> None:
        if chunk.seq.num_computed_tokens == chunk.seq.num_tokens - 1:  # only the newest token: a decode
            result.num_decode_tokens += 1
        else:
            result.num_prefill_tokens += chunk.num_new_tokens

    def _postprocess(self, seq: Sequence, token_id: int, logprob: TokenLogprob | None) -> RequestOutput:
        request = self.requests[seq.request_id]
        seq.append_token(token_id)
        self.generation_tokens_total += 1
        if request.logprobs is not None:
            request.logprobs.append(logprob)
        reason = self._finish_reason(request, token_id)
        if reason is not None:
            request.stream.flush()
            self.scheduler.finish(seq, reason)
            self.runner.release(seq.request_id)
            del self.requests[seq.request_id]
        return self._output(request, [token_id], [logprob] if logprob else [], finished=reason is not None)

    def _finish_reason(self, request: _Request, token_id: int) -> str | None:
        seq, params = request.seq, request.seq.params
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.eos_token_ids):
            return "stop"
        if request.stream.push(token_id):
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _output(self, request: _Request, token_ids: list[int], logprobs: list[TokenLogprob],
                finished: bool) -> RequestOutput:
        seq = request.seq
        return RequestOutput(
            request_id=seq.request_id, text=request.stream.take_delta(finished), token_ids=token_ids,
            finished=finished, finish_reason=seq.finish_reason, num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens, logprobs=logprobs if request.logprobs is not None else None,
            arrival_time=seq.arrival_time, first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time)

    def stats(self) -> EngineStats:
        manager = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=1 - manager.num_free_blocks / manager.num_blocks,
            num_free_blocks=manager.num_free_blocks, num_total_blocks=manager.num_blocks,
            prefix_cache_queries=manager.num_prefix_queries, prefix_cache_hits=manager.num_prefix_hits,
            num_steps=self.num_steps, last_step_time=self.last_step_time,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
            is_alive=True)


class LLM:
    """Offline generation: `LLM(path).generate(prompts, SamplingParams(...))`."""

    def __init__(self, path: str | Path | None = None, *, engine: LLMEngine | None = None, **overrides):
        if (path is None) == (engine is None):
            raise ValueError("give exactly one of a model path or an engine")
        self.engine = engine or LLMEngine.from_path(path, **overrides)
        self._ids = itertools.count()

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, engine_config: EngineConfig | None = None) -> LLM:
        """Wrap an in-memory model (tests, notebooks)."""
        return cls(engine=LLMEngine(model, tokenizer, engine_config or EngineConfig()))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: list[str] | list[list[int]] | str,
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[CompletionOutput]:
        """Run every prompt to completion; results come back in prompt order."""
        prompts = [prompts] if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)) else prompts
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError("give one SamplingParams or one per prompt")
        request_ids = [self._add(prompt, p) for prompt, p in zip(prompts, params_list)]
        results = {rid: CompletionOutput("", [], None, list(self.engine.requests[rid].seq.prompt_token_ids),
                                         [] if p.logprobs is not None else None)
                   for rid, p in zip(request_ids, params_list)}
        while self.engine.has_unfinished():
            for output in self.engine.step().outputs:
                _accumulate(results[output.request_id], output)
        return [results[rid] for rid in request_ids]

    def _add(self, prompt: str | list[int], params: SamplingParams) -> str:
        request_id = f"llm-{next(self._ids)}"
        self.engine.add_request(request_id, prompt, params)
        return request_id


def _accumulate(result: CompletionOutput, output: RequestOutput) -> None:
    result.text += output.text
    result.token_ids.extend(output.token_ids)
    result.finish_reason = output.finish_reason
    if result.logprobs is not None and output.logprobs:
        result.logprobs.extend(output.logprobs)


class AsyncLLMEngine:
    """LLMEngine stepped by a background thread; each request's outputs arrive on its own asyncio queue.

    The event loop never runs the model: add/abort are queued as commands that the thread applies between
    steps, and the thread hands outputs back with loop.call_soon_threadsafe.

    `from_path` defers loading to that same thread: once a second thread has run OpenMP teams (loading
    does), libgomp throttles its spin-waits and every parallel region of a step pays a futex wake-up
    (measured: a step twice as slow). Loading and stepping on one thread avoids it.
    """

    IDLE_TICK_S = 0.2  # how often an idle loop wakes up (keeps last_step_time fresh for health checks)

    def __init__(self, engine: LLMEngine | None = None, build: Callable[[], LLMEngine] | None = None):
        if (engine is None) == (build is None):
            raise ValueError("give exactly one of an engine or a function that builds one")
        self.engine, self._build = engine, build
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.error: BaseException | None = None
        self.last_step_time = time.monotonic()

    @classmethod
    def from_path(cls, path: str | Path, **overrides) -> AsyncLLMEngine:
        """For an engine dir, a .gguf file or an HF checkpoint dir; `start()` loads it on the loop thread."""
        return cls(build=lambda: LLMEngine.from_path(path, **overrides))

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, engine_config: EngineConfig | None = None):
        return cls(LLMEngine(model, tokenizer, engine_config or EngineConfig()))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.model_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    async def start(self) -> None:
        """Start the loop thread (building the engine there first, if it was given as a function); raises
        what building raised."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        ready = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="llm-engine", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise

    async def stop(self) -> None:
        """Stop the loop thread; requests still active end with finish_reason "abort"."""
        if self._thread is None:
            return
        for request_id in list(self._streams):
            self.abort(request_id)
        self._stopping = True
        self._wakeup.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def add_request(self, request_id: str, prompt: str | list[int],
                    params: SamplingParams | None = None) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream; raises ValueError now for a request that can never run."""
        if not self.is_alive:
            raise RuntimeError("engine is not running (call start(); see .error)")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already active")
        params = params or SamplingParams()
        prompt_token_ids = self.engine.tokenize(prompt)
        self.engine.validate(prompt_token_ids, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._command(("add", request_id, prompt_token_ids, params, time.monotonic()))
        return self._stream(request_id, stream)

    def abort(self, request_id: str) -> None:
        """Free the request's KV blocks before the next step; its stream ends with finish_reason "abort"."""
        self._command(("abort", request_id))

    def stats(self) -> EngineStats:
        return dataclasses.replace(self.engine.stats(), last_step_time=self.last_step_time,
                                   is_alive=self.is_alive)

    async def _stream(self, request_id: str, stream: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the consumer went away: free the request's blocks
                self.abort(request_id)

    def _command(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()

    # ---- the loop thread ----

    def _run(self, ready: asyncio.Future) -> None:
        try:
            if self.engine is None:
                self.engine = self._build()
        except Exception as error:
            self._loop.call_soon_threadsafe(_settle, ready, error)
            return
        self._loop.call_soon_threadsafe(_settle, ready, None)
        try:
            while not self._stopping:
                self._apply_commands()
                if self.engine.has_unfinished():
                    self._publish(self.engine.step().outputs)
                else:
                    self._wakeup.wait(self.IDLE_TICK_S)
                    self._wakeup.clear()
                self.last_step_time = time.monotonic()
            self._apply_commands()  # aborts queued by stop()
        except Exception as error:  # the engine is broken: fail every stream instead of hanging them
            self.error = error
            self._loop.call_soon_threadsafe(self._fail_all, error)

    def _apply_commands(self) -> None:
        while not self._commands.empty():
            kind, request_id, *args = self._commands.get()
            if kind == "add":
                self._add(request_id, *args)
            else:
                output = self.engine.abort_request(request_id)
                self._publish([output] if output else [])

    def _add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
             arrival_time: float) -> None:
        try:
            self.engine.add_request(request_id, prompt_token_ids, params, arrival_time)
        except ValueError as error:
            self._loop.call_soon_threadsafe(self._deliver_error, request_id, error)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        if outputs:
            self._loop.call_soon_threadsafe(self._deliver, outputs)

    # ---- on the event loop ----

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)
            if output.finished:
                self._streams.pop(output.request_id, None)

    def _deliver_error(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put_nowait(error)

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            self._deliver_error(request_id, error)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve `future` (on the event loop) unless whoever awaited it has gone."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def load_model(path: str | Path, **overrides) -> tuple[torch.nn.Module, object, EngineConfig, ModelConfig]:
    """(model, tokenizer, engine config, model config) from an engine dir, a .gguf file or an HF dir.

    An engine dir's recorded runtime settings apply, with `overrides` on top.
    """
    path = Path(path)
    config_path = path / "config.json"
    if config_path.is_file() and "model" in json.loads(config_path.read_text()):
        from inference.build import load_engine, read_spec

        config = read_spec(path).engine_config(**overrides)
        spec, model, tokenizer = load_engine(path, config.device)
        return model, tokenizer, config, spec.model
    return _load_checkpoint(path, EngineConfig().replace(**overrides))


def _load_checkpoint(path: Path, config: EngineConfig):
    from inference.loaders import load_checkpoint
    from inference.model import LlamaForCausalLM, convert_hf_state_dict

    checkpoint = load_checkpoint(path)
    with torch.device("meta"):
        model = LlamaForCausalLM(checkpoint.config)
    model.load_state_dict(convert_hf_state_dict(checkpoint.state_dict, checkpoint.config), assign=True)
    return model, checkpoint.tokenizer, config, checkpoint.config
