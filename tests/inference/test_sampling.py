"""Sampler: greedy branch, filters, penalties, per-request seeds, logprobs; SamplingParams validation."""
from __future__ import annotations

import pytest
import torch

from inference.config import SamplingParams
from inference.sampling import (SamplingRow, apply_penalties, draw, make_generator, sample, tempered_probs,
                                top_k_top_p)


def _row(params: SamplingParams, prompt=(), output=(), seed=None) -> SamplingRow:
    generator = None if params.is_greedy else make_generator(params.seed if seed is None else seed, "cpu")
    return SamplingRow(params, generator, list(prompt), list(output))


def _logits(rows: int = 3, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_rows_take_the_argmax():
    logits = _logits()
    tokens, logprobs = sample(logits, [_row(SamplingParams(temperature=0))] * 3)
    assert tokens == logits.argmax(-1).tolist() and logprobs == [None] * 3


def test_same_seed_same_tokens_whatever_the_batch():
    logits = _logits(rows=4)
    params = SamplingParams(temperature=1.3, seed=7)
    draws = []
    for _ in range(2):
        row = _row(params)
        draws.append([sample(logits[:1], [row])[0][0] for _ in range(20)])
    mixed_row = _row(params)
    mixed = [sample(logits, [mixed_row] + [_row(SamplingParams(temperature=1.0, seed=i)) for i in range(3)])[0][0]
             for _ in range(20)]
    assert draws[0] == draws[1] == mixed
    other = _row(SamplingParams(temperature=1.3, seed=8))
    assert [sample(logits[:1], [other])[0][0] for _ in range(20)] != draws[0]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = _logits()
    for params in (SamplingParams(top_k=1, seed=1), SamplingParams(top_p=1e-6, seed=1)):
        tokens, _ = sample(logits, [_row(params) for _ in range(3)])
        assert tokens == logits.argmax(-1).tolist()


def _kept(logits: torch.Tensor, **params) -> list[bool]:
    """Which tokens stay allowed under `params` (in vocabulary order)."""
    sp = [SamplingParams(**params)] * logits.shape[0]
    probs, ids = top_k_top_p(tempered_probs(logits, sp), sp)
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ids, probs > 0)
    return kept.squeeze(0).tolist()


def test_filters_keep_exactly_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert _kept(logits, top_k=2) == [True, True, False, False]
    assert _kept(logits, top_p=0.7) == [True, True, False, False]
    assert _kept(logits, top_p=0.8) == [True, True, True, False]
    assert _kept(logits, min_p=0.25) == [True, True, True, False]
    assert _kept(logits, top_k=3, top_p=0.8) == [True, True, False, False]  # top-p within the top-3 mass
    probs = tempered_probs(logits, [SamplingParams(temperature=2.0)])
    torch.testing.assert_close(probs, torch.softmax(logits / 2, -1))


def test_wide_nucleus_falls_back_to_the_whole_vocabulary():
    logits = torch.zeros(1, 1000)
    logits[0, :10] = 1.0
    kept = _kept(logits, top_p=0.95)
    assert 900 < sum(kept) < 1000 and all(kept[:10])


def test_sampled_tokens_follow_the_distribution():
    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3]])
    generator = make_generator(3, "cpu")
    picks = [draw(probs, [generator]).item() for _ in range(400)]
    assert set(picks) == {1, 3} and 0.6 < picks.count(1) / 400 < 0.8


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    repeated = apply_penalties(logits, [_row(SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1])])
    assert repeated.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    counted = apply_penalties(logits, [_row(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
                                            output=[2, 2, 3])])
    assert counted.tolist() == [[2.0, -2.0, 1.0 - 0.5 - 0.5, 0.5 - 0.5 - 0.25]]
    assert apply_penalties(logits, [_row(SamplingParams(temperature=0))]) is logits


def test_logprobs_report_the_chosen_token_and_top_n():
    logits = _logits(rows=2)
    tokens, logprobs = sample(logits, [_row(SamplingParams(temperature=0, logprobs=3)),
                                       _row(SamplingParams(temperature=0))])
    record = logprobs[0]
    expected = torch.log_softmax(logits[0], -1)
    assert record.token_id == tokens[0] and record.logprob == pytest.approx(expected[tokens[0]].item())
    assert [token for token, _ in record.top] == expected.topk(3).indices.tolist()
    assert logprobs[1] is None


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(top_p=0), dict(top_k=-1), dict(min_p=1.5),
                                 dict(repetition_penalty=0), dict(presence_penalty=3), dict(max_tokens=0),
                                 dict(stop=[""]), dict(logprobs=99)])
def test_bad_sampling_params_raise_value_error(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_stop_accepts_a_single_string():
    assert SamplingParams(stop="END").stop == ["END"]
