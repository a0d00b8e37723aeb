"""The fused decode step (inference/kernels/decoder_avx2.c) against the per-operator module path: same
tokens and log-probabilities for every weight format, with decodes batched, and steps that mix decodes
with one-token prefill chunks; and the fallback for what it cannot take."""
from __future__ import annotations

import logging

import pytest
import torch
from tiny_llama import random_prompts
from weights_helpers import quantized_model, save_tiny_hf

from inference import LLM, SamplingParams, kernels
from inference.config import EngineConfig
from inference.kernels.decoder import FusedDecoder
from inference.loaders import load_checkpoint
from inference.quant import QuantConfig

pytestmark = pytest.mark.usefixtures("require_kernels")


@pytest.fixture(autouse=True, params=kernels.supported_paths() or [None])
def cpu_path(request, monkeypatch):
    """Every test once per kernel path this CPU supports (test_dispatch reports the paths it lacks)."""
    if request.param:
        monkeypatch.setenv(kernels.PATH_ENV, request.param)
    return request.param


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return load_checkpoint(save_tiny_hf(tmp_path_factory.mktemp("tiny"), vocab_size=260, attention_bias=True))


# a budget of as many tokens as sequences makes steps where decodes and a one-token prefill chunk meet; float32
# caches, so both paths keep the same keys and values to the bit ("float16 cache" covers the rounded ones)
CONFIG = EngineConfig(kv_block_size=4, max_num_batched_tokens=4, max_num_seqs=4, kv_cache_bytes=2**20,
                      kv_cache_dtype="float32")
# more sequences than linear.h's register paths take (its SMALL_M_MAX): the head runs the tiled path, and the
# W8A8 tiles end in a remainder
WIDE = CONFIG.replace(max_num_batched_tokens=12, max_num_seqs=12, kv_cache_bytes=2**21)
BATCHES = {"4 sequences": (CONFIG, [3, 9, 1, 14, 6, 2]),
           "12 sequences": (WIDE, [3, 9, 1, 14, 6, 2, 5, 11, 4, 8, 7, 13, 2]),
           "float16 cache": (CONFIG.replace(kv_cache_dtype="float16"), [3, 9, 1, 14, 6, 2])}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("mode", "group_size"), [("none", 32), ("int8", 32), ("int4", 32), ("int4", 64), ("w8a8", 32)])
def test_fused_decode_steps_equal_the_module_path(checkpoint, mode, group_size, batch, cpu_path):
    """Log-probabilities to 1e-4, except where values are rounded on the way: the two paths' hidden states differ
    in the last float32 bits, which now and then round a value to the neighbouring bf16 (x of the int8 output
    head on a path with bf16 products, every quantized mode: a logit moves by ~1e-3) or float16 (a key or value
    in a float16 cache: ~3e-4)."""
    config, prompt_lengths = BATCHES[batch]
    tolerance = 1e-2 if mode != "none" and cpu_path and kernels.PATHS[cpu_path].bf16_products else 1e-4
    if config.kv_cache_dtype == "float16":
        tolerance = max(tolerance, 2e-3)
    model = quantized_model(checkpoint, QuantConfig(mode, group_size=group_size))
    fused, plain = LLM.from_model(model, None, config), LLM.from_model(model, None, config)
    plain.engine.runner.fused_decoder = None
    runner, steps = fused.engine.runner, []
    run_fused = runner._run_fused_decode

    def spy(chunks):
        steps.append((len(chunks), sum(chunk.completes_sequence for chunk in chunks)))
        return run_fused(chunks)

    runner._run_fused_decode = spy
    prompts = random_prompts(prompt_lengths, vocab=256)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    got, want = fused.generate(prompts, params), plain.generate(prompts, params)
    for ours, reference in zip(got, want):
        assert ours.token_ids == reference.token_ids
        torch.testing.assert_close([lp.logprob for lp in ours.logprobs], [lp.logprob for lp in reference.logprobs],
                                   rtol=tolerance, atol=tolerance)
        assert [[t for t, _ in lp.top] for lp in ours.logprobs] == [[t for t, _ in lp.top] for lp in reference.logprobs]
    assert any(count >= config.max_num_seqs for count, _ in steps)  # batched decodes
    assert any(sampled < count for count, sampled in steps)  # a one-token prefill chunk rode along
    assert fused.engine.block_manager.num_free_blocks == fused.engine.block_manager.num_blocks


def test_the_module_path_runs_what_the_kernel_cannot_take(checkpoint, tmp_path, monkeypatch):
    bfloat16 = LLM.from_model(quantized_model(checkpoint, QuantConfig("none")), None, CONFIG.replace(dtype="bfloat16"))
    assert bfloat16.engine.runner.fused_decoder is None
    # a float32 model over a bfloat16 cache: no kernel reads one, so the module path widens what it gathers
    bf16_cache = LLM.from_model(quantized_model(checkpoint, QuantConfig("int8")), None,
                                CONFIG.replace(kv_cache_dtype="bfloat16"))
    assert bf16_cache.engine.runner.fused_decoder is None
    assert bf16_cache.engine.runner.kv_caches[0][0].dtype == torch.bfloat16
    assert len(bf16_cache.generate([[1, 2, 3]], SamplingParams(max_tokens=5, ignore_eos=True))[0].token_ids) == 5
    odd_vocab = quantized_model(load_checkpoint(save_tiny_hf(tmp_path)), QuantConfig("none"))  # 258 logit rows
    llm = LLM.from_model(odd_vocab, None, CONFIG)
    assert llm.engine.runner.fused_decoder is None
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, ignore_eos=True))[0].token_ids) == 3
    monkeypatch.setenv("OPSLAB_FUSED_DECODE", "0")
    assert LLM.from_model(quantized_model(checkpoint, QuantConfig("none")), None, CONFIG).engine.runner.fused_decoder is None
    assert FusedDecoder.for_model(*_model_and_caches(checkpoint)) is None


def test_w8a8_where_its_kernel_does_not_run_warns_and_still_generates(checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="inference.model_runner"):
        llm = LLM.from_model(quantized_model(checkpoint, QuantConfig("w8a8")), None, CONFIG.replace(dtype="bfloat16"))
    assert "w8a8 has no cpu bfloat16 kernel" in caplog.text
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, ignore_eos=True))[0].token_ids) == 3


def _model_and_caches(checkpoint):
    llm = LLM.from_model(quantized_model(checkpoint, QuantConfig("int8")), None, CONFIG)
    return llm.engine.runner.model, llm.engine.runner.kv_caches
