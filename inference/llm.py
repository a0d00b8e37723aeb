"""Offline generation: `LLM(path).generate(prompts, SamplingParams(...))` steps an LLMEngine to completion."""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from inference.config import EngineConfig, SamplingParams
from inference.llm_engine import LLMEngine
from inference.outputs import CompletionOutput, RequestOutput


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
        """Run every prompt to completion; results come back in prompt order.

        A request the engine fails ends with finish_reason "error" and its reason in `.error`; the others finish.
        """
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
    result.error = output.error
    if result.logprobs is not None and output.logprobs:
        result.logprobs.extend(output.logprobs)
