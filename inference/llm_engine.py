"""The engine's step loop, top-down: LLMEngine.step() = schedule → run the model → post-process each sequence.

`LLMEngine` owns the scheduler, the block manager and the model runner; the offline `LLM` (llm.py) and the
server's `AsyncLLMEngine` (async_engine.py) both drive it. What goes wrong with one request's data (its
sampling, its detokenization, its stop strings) finishes that request with finish_reason "error" and frees
its blocks; a model forward that raises fails the sequences of that step. Either way the loop goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.block_manager import BlockManager
from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.loaders.model_loader import load_model
from inference.model_runner import ModelRunner, plan_num_blocks
from inference.outputs import RequestOutput, StepOutput, TextStream
from inference.sampling import TokenLogprob
from inference.scheduler import Scheduler
from inference.sequence import Sequence

log = logging.getLogger(__name__)

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
        if not all(0 <= t < self.model_config.vocab_size for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {self.model_config.vocab_size})")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_token_ids)} tokens; max_model_len is {self.max_model_len}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        self.check_fits_together([len(prompt_token_ids) + params.max_tokens])

    def check_fits_together(self, lengths: list[int]) -> None:
        """Raise ValueError unless sequences growing to these lengths (capped at max_model_len) can hold their
        KV blocks at the same time: a request that can never fit, or n choices that would only evict each other."""
        manager = self.block_manager
        longest = [min(length, self.max_model_len) for length in lengths]
        if sum(manager.blocks_for(length) for length in longest) > manager.num_blocks:
            what = "request needs" if len(longest) == 1 else f"{len(longest)} sequences together need"
            raise ValueError(f"{what} up to {sum(longest)} tokens of KV cache but the cache holds "
                             f"{manager.num_blocks * manager.block_size}: it can never fit")

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
            try:
                ran = self.runner.run(scheduled.chunks)
            except Exception as error:  # the batch failed as a whole: fail its sequences, keep the engine
                log.exception("model step failed; failing its %d sequences", len(scheduled.chunks))
                result.outputs = [self._fail(chunk.seq, error, logged=True) for chunk in scheduled.chunks]
            else:
                result.model_elapsed = time.monotonic() - run_start - ran.prepare_seconds
                for chunk in scheduled.chunks:
                    self._count_tokens(result, chunk)
                    chunk.seq.num_computed_tokens += chunk.num_new_tokens
                    self.block_manager.cache_computed_blocks(chunk.seq)
                result.outputs = [self._postprocess_or_fail(seq, token_id, logprob)
                                  for seq, token_id, logprob in zip(ran.seqs, ran.token_ids, ran.logprobs)]
                result.outputs += [self._fail(seq, error) for seq, error in ran.failed]
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

    def _postprocess_or_fail(self, seq: Sequence, token_id: int, logprob: TokenLogprob | None) -> RequestOutput:
        try:
            return self._postprocess(seq, token_id, logprob)
        except Exception as error:
            return self._fail(seq, error)

    def _fail(self, seq: Sequence, error: Exception, logged: bool = False) -> RequestOutput:
        """Finish one request with finish_reason "error" and free its blocks (safe however far it had got)."""
        if not logged:
            log.error("request %s failed", seq.request_id, exc_info=error)
        self.requests.pop(seq.request_id, None)
        self.scheduler.finish(seq, "error")
        self.runner.release(seq.request_id)
        return RequestOutput(
            request_id=seq.request_id, text="", token_ids=[], finished=True, finish_reason="error",
            num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens, logprobs=None,
            arrival_time=seq.arrival_time, first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time, error=f"{type(error).__name__}: {error}")

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
