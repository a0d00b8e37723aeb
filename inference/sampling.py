"""Turn a batch of logits into next tokens, one row per sequence, each with its own SamplingParams.

Order: penalties → greedy rows take the argmax → the other rows are scaled by temperature and filtered by
min-p, top-k and top-p, then drawn with the request's own torch.Generator (so a seeded request gives the
same tokens whatever else shares its batch). Everything is batched except drawing one uniform number per row.
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
        token_ids[sampled] = sample_rows(logits[sampled], [rows[i].params for i in sampled],
                                         [rows[i].generator for i in sampled])
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


CANDIDATES = 256  # top-k / top-p look at this many best tokens first, and at the full vocab only if needed


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """[M, vocab] logits → [M] sampled token ids (temperature, min-p, then top-k / top-p where set)."""
    probs = tempered_probs(logits, params)
    token_ids = torch.empty(len(params), dtype=torch.long, device=logits.device)
    nucleus = [i for i, p in enumerate(params) if p.top_k or p.top_p < 1]
    plain = [i for i in range(len(params)) if i not in set(nucleus)]
    if plain:
        token_ids[plain] = draw(probs[plain], [generators[i] for i in plain])
    if nucleus:
        top_probs, top_ids = top_k_top_p(probs[nucleus], [params[i] for i in nucleus])
        picks = draw(top_probs, [generators[i] for i in nucleus])
        token_ids[nucleus] = top_ids.gather(1, picks[:, None]).squeeze(1)
    return token_ids


def tempered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """softmax(logits / temperature), with tokens below min_p × the top probability zeroed."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
    probs = (logits / temperature).softmax(dim=-1)
    min_p = torch.tensor([p.min_p for p in params], device=device)[:, None]
    return probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)


def top_k_top_p(probs: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """The allowed tokens of each row, best first: ([M, k] renormalized probabilities, [M, k] token ids).

    Only the best `CANDIDATES` tokens (or the largest top_k) are ranked; a row whose nucleus might reach
    beyond them is sorted over the whole vocabulary instead.
    """
    device, vocab = probs.device, probs.shape[-1]
    top_k = torch.tensor([p.top_k or vocab for p in params], device=device)[:, None]
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
    total = probs.sum(dim=-1, keepdim=True)
    k = min(vocab, max(CANDIDATES, *(p.top_k for p in params)))
    top_probs, top_ids = probs.topk(k, dim=-1)  # sorted, best first
    too_narrow = (top_k > k) & (top_probs.sum(dim=-1, keepdim=True) <= top_p * total)
    if bool(too_narrow.any()):
        top_probs, top_ids = _sort_rows(probs, top_probs, top_ids, too_narrow.squeeze(1).nonzero().squeeze(1))
    width = top_probs.shape[-1]
    top_probs = top_probs.masked_fill(torch.arange(width, device=device)[None, :] >= top_k, 0.0)
    allowed = torch.where(top_k <= width, top_probs.sum(dim=-1, keepdim=True), total)  # mass of the top-k set
    normalized = top_probs / allowed
    outside_top_p = (normalized.cumsum(dim=-1) - normalized) > top_p  # keeps at least the first token
    top_probs = normalized.masked_fill(outside_top_p, 0.0)
    return top_probs / top_probs.sum(dim=-1, keepdim=True), top_ids


def _sort_rows(probs: torch.Tensor, top_probs: torch.Tensor, top_ids: torch.Tensor,
               rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen the candidates to the whole vocabulary: fully sorted for `rows`, zero-padded for the others."""
    wide_probs = probs.new_zeros(probs.shape)
    wide_ids = torch.zeros_like(probs, dtype=torch.long)
    wide_probs[:, :top_probs.shape[-1]], wide_ids[:, :top_ids.shape[-1]] = top_probs, top_ids
    wide_probs[rows], wide_ids[rows] = probs[rows].sort(dim=-1, descending=True)
    return wide_probs, wide_ids


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One index per row by inverse CDF; each row's uniform number comes from its own generator."""
    uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    cdf = probs.cumsum(dim=-1)
    picks = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)
    return picks.clamp_(max=probs.shape[-1] - 1)


def _logprobs(raw: torch.Tensor | None, row: int, token_id: int, top_n: int | None) -> TokenLogprob | None:
    if raw is None or top_n is None:
        return None
    values, ids = raw[row].topk(top_n) if top_n else (raw[row][:0], raw[row][:0].long())
    return TokenLogprob(token_id=token_id, logprob=raw[row, token_id].item(),
                        top=list(zip(ids.tolist(), values.tolist())))
