"""Quantization: round-trip error bounds, packed storage, runtime modules vs a reference dequantization,
the w8a8 activation rounding, and quality on SmolLM2.

Quality metric (SmolLM2, teacher-forced over QUALITY_TEXT): top-1 agreement = share of positions where
the quantized model's argmax next token equals the float32 model's; perplexity of the text under each.
Measured (159 tokens, fp32 perplexity 31.72): int8 agreement 0.975, perplexity 31.67; int4 group 32
1.000 / 31.72 -- lossless here, because the GGUF weights already are Q4_1, the same asymmetric 4-bit code
over the same 32-element groups; int4 group 64 0.711 / 44.87; group 128 0.648 / 55.30 (re-quantizing a
135M model's Q4_1 weights onto coarser groups costs a lot); w8a8 (int8's weights, activations rounded to
int8 per block of 32) 0.981 / 31.76 through the kernel, 0.962 / 31.66 on the PyTorch path (the two round a
few activations that sit on a rounding boundary differently, and 159 tokens is a small sample: over 1695
tokens of this text plus three of the repository's documents, PyTorch path, int8 0.974 and w8a8 0.963,
perplexity +0.2 % and +0.5 %). Bounds: int8 >= 97% agreement (the
issue's bar) and perplexity within 5%; the int4 and w8a8 bounds sit just under the measured numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from weights_helpers import logits_of, quantized_model

from inference.quant import (Int4Linear, Int8Linear, QuantConfig, convert_for_runtime, dequantize_int4,
                             dequantize_int8, multiplier_bits, pack_int4, quantize_activations, quantize_int4,
                             quantize_int8, quantize_state_dict, quantized_names, unpack_int4)


def test_int8_round_trip_error_is_at_most_half_a_step():
    weight = torch.randn(48, 80)
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (48,)
    error = (dequantize_int8(q, scales, torch.float32) - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-6).all()


def test_int4_packs_two_nibbles_per_byte():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == int(q[0, 0]) | int(q[0, 16]) << 4  # block-32 layout: value i with i + 16
    assert int(packed[0, 16]) == int(q[0, 32]) | int(q[0, 48]) << 4


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_round_trip_error_is_at_most_half_a_step(group_size):
    weight = torch.randn(8, 576)  # 576 is not a multiple of 128: the last group is padded
    packed, scales, mins = quantize_int4(weight, group_size)
    groups = -(-576 // group_size)
    assert packed.shape == (8, groups * group_size // 2) and scales.shape == mins.shape == (8, groups)
    restored = dequantize_int4(packed, scales, mins, 576, torch.float32)
    step = scales.float().repeat_interleave(group_size, dim=1)[:, :576]
    assert restored.shape == weight.shape
    assert ((restored - weight).abs() <= step / 2 + 2e-3).all()  # + the float16 rounding of the group min


def test_w8a8_activations_round_each_block_within_its_own_int8_range():
    """Each block of 32 gets a step of about its own max / 127 (its scale is the row's times an integer
    multiplier, rounded up): an outlier block does not flatten its row's small blocks; zeros stay zeros."""
    x = torch.randn(4, 96)
    x[0, :32] *= 1000.0
    x[1] = 0.0
    rounded = quantize_activations(x)
    steps = 2 ** multiplier_bits(96)
    block_max = x.reshape(4, 3, 32).abs().amax(dim=2, keepdim=True)
    row_max = block_max.amax(dim=1, keepdim=True)
    step = block_max / 127 + row_max / (127 * steps)  # the multiplier's rounding up adds at most one row step
    error = (rounded - x).reshape(4, 3, 32).abs()
    assert (error <= step / 2 + 1e-6).all()
    assert torch.equal(rounded[1], x[1])
    assert (error[0, 1:] < 0.001 * row_max[0] / 127).all()  # 1000x finer than one scale for the whole row
    assert multiplier_bits(576) == 10 and multiplier_bits(1536) == 9 and multiplier_bits(64) == 14


def _quantized_layer(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    """`linear` through the build (quantize_state_dict) and runtime (convert_for_runtime on meta) phases."""
    state_dict = quantize_state_dict(nn.Sequential(linear).state_dict(), config, ["0"])
    with torch.device("meta"):
        holder = nn.Sequential(nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None))
    convert_for_runtime(holder, config, quantized_names(state_dict))
    holder.load_state_dict(state_dict, assign=True)
    return holder[0]


@pytest.mark.parametrize(("config", "module_type"), [(QuantConfig("int8"), Int8Linear),
                                                     (QuantConfig("int4", 32), Int4Linear),
                                                     (QuantConfig("int4", 128), Int4Linear)])
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_linear_equals_reference_dequantization(config, module_type, bias):
    torch.manual_seed(0)
    linear = nn.Linear(192, 96, bias=bias)
    module = _quantized_layer(linear, config)
    assert isinstance(module, module_type)
    state = module.state_dict()
    if config.mode == "int8":
        reference = dequantize_int8(state["weight"], state["scales"], torch.float32)
    else:
        reference = dequantize_int4(state["weight"], state["scales"], state["mins"], 192, torch.float32)
    x = torch.randn(7, 192)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), F.linear(x, reference, linear.bias), rtol=1e-5, atol=1e-5)
        assert (module(x) - linear(x)).abs().max() < 0.15  # and close to the float layer


def test_quantized_linear_follows_the_activation_dtype():
    module = _quantized_layer(nn.Linear(64, 32), QuantConfig("int4", 32))
    with torch.inference_mode():
        assert module(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_bad_quant_settings_are_rejected():
    with pytest.raises(ValueError, match="quant mode"):
        QuantConfig("int3")
    with pytest.raises(ValueError, match="group size"):
        QuantConfig("int4", 48)


# ---- SmolLM2 quality ----------------------------------------------------------------------------
QUALITY_TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe built "
    "wooden machines that riders pushed along with their feet. Pedals arrived decades later, and with "
    "them came the tall high-wheeler, a fast but dangerous design. The safety bicycle of the 1880s, with "
    "two wheels of equal size and a chain driving the rear wheel, made cycling practical for millions of "
    "people. Pneumatic tyres softened the ride, and cheap steel tubing made the frames light and strong. "
    "Cities soon paved roads for cyclists, and clubs organised long tours into the countryside. Today the "
    "bicycle remains one of the most efficient machines ever built: a rider converts food energy into "
    "motion with less waste than any car, train or aeroplane, and needs no fuel beyond breakfast."
)


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    return math.exp(F.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item())


@pytest.fixture(scope="module")
def quality_reference(smollm2_checkpoint, smollm2_model):
    ids = smollm2_checkpoint.tokenizer.encode(QUALITY_TEXT)
    return ids, logits_of(smollm2_model, ids)


@pytest.mark.model
@pytest.mark.parametrize(("config", "min_agreement", "max_ppl_ratio"), [
    (QuantConfig("int8"), 0.97, 1.05),
    (QuantConfig("int4", 32), 0.99, 1.01),
    (QuantConfig("int4", 128), 0.62, 1.8),
    (QuantConfig("w8a8"), 0.95, 1.02),
], ids=["int8", "int4-g32", "int4-g128", "w8a8"])
def test_quantized_smollm2_stays_close_to_float32(smollm2_checkpoint, quality_reference, config,
                                                  min_agreement, max_ppl_ratio):
    ids, reference = quality_reference
    logits = logits_of(quantized_model(smollm2_checkpoint, config), ids)
    agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    ppl, ppl_fp32 = perplexity(logits, ids), perplexity(reference, ids)
    print(f"\n{config.mode} g{config.group_size}: top-1 agreement {agreement:.3f} over {len(ids)} tokens, "
          f"perplexity {ppl:.3f} vs fp32 {ppl_fp32:.3f} (delta {ppl - ppl_fp32:+.3f})")
    assert agreement >= min_agreement
    assert ppl <= ppl_fp32 * max_ppl_ratio
