"""The model runner: owns the model and the KV cache, turns a scheduled step into tensors, runs, samples.

Per step it builds flat Python lists (input ids, positions, cache slots, block tables, lengths), converts
each to a tensor once, runs the model over all tokens of the step together, computes logits only for the
last token of sequences that completed their prompt/decode, and samples. On a CPU with float32 weights and
the fused kernels, a step of decodes only (one new token per sequence) instead runs the whole model in one
C call (kernels.decoder.FusedDecoder): same math, without the per-operator overhead.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psutil
import torch

from inference.attention import (AttentionMetadata, allocate_kv_caches, build_attention_metadata,
                                 kv_bytes_per_block)
from inference import kernels
from inference.config import EngineConfig, ModelConfig
from inference.kernels.decoder import FusedDecoder
from inference.quant import Int8Linear, use_cpu_kernels
from inference.sampling import SamplingRow, TokenLogprob, make_generator, sample
from inference.scheduler import ScheduledChunk
from inference.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepInputs:
    """Tensors for one forward pass."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_rows: torch.Tensor  # [N] flat index of the last token of each sequence that samples this step
    sampled_seqs: list[Sequence]


@dataclass(slots=True)
class RunnerOutput:
    """One new token (and optional logprobs) for each sequence that completed its scheduled tokens."""

    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    prepare_seconds: float = 0.0  # host time spent building the step's tensors
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)  # sequences whose sampling raised


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def plan_num_blocks(model_config: ModelConfig, config: EngineConfig, max_model_len: int) -> int:
    """KV blocks that fit the configured budget, capped at what max_num_seqs full-length sequences use."""
    per_block = kv_bytes_per_block(model_config.num_hidden_layers, config.kv_block_size,
                                   model_config.num_key_value_heads, model_config.head_dim,
                                   resolve_dtype(config.resolved_kv_cache_dtype()))
    budget = config.kv_cache_bytes or int(config.kv_cache_memory_fraction * _free_memory(config.device))
    needed = config.max_num_seqs * -(-max_model_len // config.kv_block_size)
    num_blocks = min(budget // per_block, needed)
    if num_blocks < 1:
        raise ValueError(f"KV cache budget {budget} bytes is smaller than one block ({per_block} bytes)")
    return num_blocks


def _free_memory(device: str) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


class ModelRunner:
    def __init__(self, model: torch.nn.Module, model_config: ModelConfig, config: EngineConfig, num_blocks: int):
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.block_size = config.kv_block_size
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.device.type == "cpu" and self.dtype == torch.float32 and kernels.enabled():
            use_cpu_kernels(self.model)
        elif any(isinstance(module, Int8Linear) and module.int8_activations for module in self.model.modules()):
            log.warning("w8a8 has no %s %s kernel: activations are rounded in PyTorch and the weights dequantized, "
                        "slower than int8 (an int8 or unquantized engine is the faster choice here)",
                        self.device.type, config.dtype)
        self.kv_caches = allocate_kv_caches(model_config.num_hidden_layers, num_blocks, self.block_size,
                                            model_config.num_key_value_heads, model_config.head_dim,
                                            resolve_dtype(config.resolved_kv_cache_dtype()), self.device)
        self.fused_decoder = None
        if self.device.type == "cpu" and self.dtype == torch.float32 and kernels.enabled():
            self.fused_decoder = FusedDecoder.for_model(self.model, self.kv_caches)
        self.generators: dict[str, torch.Generator] = {}

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk]) -> RunnerOutput:
        if self.fused_decoder is not None and all(chunk.num_new_tokens == 1 for chunk in chunks):
            return self._run_fused_decode(chunks)
        start = time.monotonic()
        inputs = self.prepare(chunks)
        prepared = time.monotonic() - start
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)  # [T, H]
        if not inputs.sampled_seqs:
            return RunnerOutput([], [], [], prepared)
        logits = self.model.compute_logits(hidden[inputs.logits_rows])  # [N, vocab]
        return self._sample(logits, inputs.sampled_seqs, prepared)

    def _run_fused_decode(self, chunks: list[ScheduledChunk]) -> RunnerOutput:
        """One new token per sequence: the whole model in one kernel call, then sampling."""
        positions = [chunk.seq.num_computed_tokens for chunk in chunks]
        logits = self.fused_decoder(
            token_ids=[chunk.seq.token_ids[p] for chunk, p in zip(chunks, positions)], positions=positions,
            slots=[self._slot(chunk.seq, p) for chunk, p in zip(chunks, positions)],
            block_tables=[chunk.seq.block_table for chunk in chunks], context_lens=[p + 1 for p in positions])
        rows = [i for i, chunk in enumerate(chunks) if chunk.completes_sequence]  # a 1-token prefill chunk may not
        if len(rows) < len(chunks):
            logits = logits[rows]
        return self._sample(logits, [chunks[i].seq for i in rows], 0.0)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], prepared: float) -> RunnerOutput:
        """Sample every row at once; a row whose parameters make sampling raise fails alone."""
        rows, kept, failed = [], [], []
        for i, seq in enumerate(seqs):
            try:
                rows.append(self._sampling_row(seq))
                kept.append(i)
            except Exception as error:
                failed.append((seq, error))
        if len(kept) < len(seqs):
            logits, seqs = logits[kept], [seqs[i] for i in kept]
        if not seqs:
            return RunnerOutput([], [], [], prepared, failed)
        try:
            token_ids, logprobs = sample(logits, rows)
        except Exception:
            # find the row that breaks the batch (rows drawn before the failure move their generators on once)
            return self._sample_row_by_row(logits, seqs, rows, prepared, failed)
        return RunnerOutput(seqs, token_ids, logprobs, prepared, failed)

    @staticmethod
    def _sample_row_by_row(logits: torch.Tensor, seqs: list[Sequence], rows: list[SamplingRow], prepared: float,
                           failed: list[tuple[Sequence, Exception]]) -> RunnerOutput:
        output = RunnerOutput([], [], [], prepared, failed)
        for i, (seq, row) in enumerate(zip(seqs, rows)):
            try:
                (token_id,), (logprob,) = sample(logits[i:i + 1], [row])
            except Exception as error:
                failed.append((seq, error))
                continue
            output.seqs.append(seq)
            output.token_ids.append(token_id)
            output.logprobs.append(logprob)
        return output

    def prepare(self, chunks: list[ScheduledChunk]) -> StepInputs:
        """Flat lists for every scheduled token, then one tensor each."""
        input_ids, positions, slot_mapping, logits_rows, sampled = [], [], [], [], []
        for chunk in chunks:
            seq, start = chunk.seq, chunk.seq.num_computed_tokens
            span = range(start, start + chunk.num_new_tokens)
            input_ids.extend(seq.token_ids[span.start:span.stop])
            positions.extend(span)
            slot_mapping.extend(self._slot(seq, p) for p in span)
            if chunk.completes_sequence:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(seq)
        meta = build_attention_metadata(
            [c.num_new_tokens for c in chunks], [c.seq.num_computed_tokens + c.num_new_tokens for c in chunks],
            [c.seq.block_table for c in chunks], slot_mapping, self.block_size, self.device)
        return StepInputs(input_ids=self._tensor(input_ids), positions=self._tensor(positions), meta=meta,
                          logits_rows=self._tensor(logits_rows), sampled_seqs=sampled)

    def _slot(self, seq: Sequence, position: int) -> int:
        """The KV cache slot of the token at `position` of `seq`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device)

    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        generator = None
        if not seq.params.is_greedy:
            generator = self.generators.get(seq.request_id)
            if generator is None:
                generator = self.generators[seq.request_id] = make_generator(seq.params.seed, self.device)
        return SamplingRow(seq.params, generator, seq.prompt_token_ids, seq.output_token_ids)

    def release(self, request_id: str) -> None:
        """Forget a finished request's generator."""
        self.generators.pop(request_id, None)
