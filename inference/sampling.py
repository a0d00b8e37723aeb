"""Turn a batch of logits into next tokens, one row per sequence, each with its own SamplingParams.

Order: penalties → greedy rows take the argmax → the other rows are scaled by temperature and filtered by
top-k, top-p and min-p, then drawn with the request's own torch.Generator (so a seeded request gives the same
tokens whatever else shares its batch). Filters are batched; only the draw itself loops over rows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from inference.config import SamplingParams


@dataclass(slots=True)
class TokenLogprob:
    """The chosen token's log-probability and the top-N alternatives (under the model's raw distribution)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs to know about one sequence."""

    params: SamplingParams
    generator: torch.Generator | None
    prompt_token_ids: list[int]
    output_token_ids: list[int]


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A per-request generator: seeded when asked, otherwise from fresh entropy."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else random.getrandbits(63))
    return generator


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [N, vocab] float32 → N token ids and N logprob records (None where not requested)."""
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(r.params.logprobs is not None for r in rows) else None
    logits = apply_penalties(logits, rows)
    token_ids = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.params.is_greedy]
    if sampled:
        probs = filtered_probs(logits[sampled], [rows[i].params for i in sampled])
        token_ids[sampled] = draw(probs, [rows[i].generator for i in sampled])
    chosen = token_ids.tolist()
    return chosen, [_logprobs(raw_logprobs, i, chosen[i], row.params.logprobs) for i, row in enumerate(rows)]


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Repetition penalty (prompt + output, HF-style) and presence / frequency penalties (output, OpenAI-style)."""
    penalized = [i for i, row in enumerate(rows) if _has_penalty(row.params)]
    if not penalized:
        return logits
    logits = logits.clone()
    for i in penalized:
        _penalize_row(logits[i], rows[i])
    return logits


def _has_penalty(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _penalize_row(row_logits: torch.Tensor, row: SamplingRow) -> None:
    params, device = row.params, row_logits.device
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_token_ids + row.output_token_ids)), dtype=torch.long, device=device)
        values = row_logits[seen]
        row_logits[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                       values * params.repetition_penalty)
    if row.output_token_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(row.output_token_ids, device=device), minlength=row_logits.numel())
        row_logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """[M, vocab] logits → probabilities after temperature, top-k, top-p and min-p."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
    sorted_logits, order = (logits / temperature).sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=device)[None, :]
    top_k = torch.tensor([p.top_k or logits.shape[-1] for p in params], device=device)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= top_k, float("-inf"))
    sorted_probs = sorted_logits.softmax(dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
    outside_top_p = (sorted_probs.cumsum(dim=-1) - sorted_probs) > top_p  # keeps at least the first token
    min_p = torch.tensor([p.min_p for p in params], device=device)[:, None]
    below_min_p = sorted_probs < min_p * sorted_probs[:, :1]
    sorted_probs = sorted_probs.masked_fill(outside_top_p | below_min_p, 0.0)
    probs = torch.zeros_like(sorted_probs).scatter_(-1, order, sorted_probs)
    return probs / probs.sum(dim=-1, keepdim=True)


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row, each from its own generator."""
    return torch.cat([torch.multinomial(row, 1, generator=generator) for row, generator in zip(probs, generators)])


def _logprobs(raw: torch.Tensor | None, row: int, token_id: int, top_n: int | None) -> TokenLogprob | None:
    if raw is None or top_n is None:
        return None
    values, ids = raw[row].topk(top_n) if top_n else (raw[row][:0], raw[row][:0].long())
    return TokenLogprob(token_id=token_id, logprob=raw[row, token_id].item(),
                        top=list(zip(ids.tolist(), values.tolist())))
