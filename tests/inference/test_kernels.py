"""The fused AVX2 linear kernel (inference/kernels) against PyTorch on the same decoded weights: every
weight format, row counts on both sides of the kernel's internal switches (1 row in registers, up to 8 for
per-row int8, tiles of 3, panels of 48), bias or not; the modules' fallback for shapes the kernel does not take; whole-model
logits with the kernels swapped in. Speed is measured by benchmarks/quant_linear.py, not here."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from weights_helpers import logits_of, quantized_model, save_tiny_hf

from inference import kernels
from inference.loaders import load_checkpoint
from inference.quant import (Int4Linear, Int8Linear, KernelLinear, QuantConfig, dequantize_int4,
                             dequantize_int8, quantize_activations, quantize_int4, quantize_int8,
                             use_cpu_kernels)

ROW_COUNTS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 50, 97]


pytestmark = pytest.mark.usefixtures("require_kernels")


@pytest.fixture(autouse=True, params=kernels.supported_paths() or [None])
def cpu_path(request, monkeypatch):
    """Every test once per kernel path this CPU supports (test_dispatch reports the paths it lacks)."""
    if request.param:
        monkeypatch.setenv(kernels.PATH_ENV, request.param)
    return request.param


def _decoded(fmt: str, weight: torch.Tensor, group_size: int | None):
    """(kernel arguments, the float32 weight they decode to)."""
    if fmt == "float32":
        return {}, weight, weight
    if fmt == "int8":
        q, scales = quantize_int8(weight, group_size)
        return {"scales": scales, "group_size": group_size or 0}, q, dequantize_int8(q, scales, torch.float32)
    packed, scales, mins = quantize_int4(weight, group_size)
    args = {"scales": scales.float(), "mins": mins.float(), "group_size": group_size}
    return args, packed, dequantize_int4(packed, scales, mins, weight.shape[1], torch.float32)


@pytest.mark.parametrize(("fmt", "group_size"), [("float32", None), ("int8", None), ("int8", 32),
                                                 ("int8", 64), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_equals_pytorch_on_the_decoded_weights(fmt, group_size, bias, cpu_path):
    """On a path with bf16 products, grouped int8 (the output head's format) multiplies x and the decoded weights
    rounded to bf16, at every row count: compared with PyTorch on the same rounded values."""
    torch.manual_seed(0)
    out_features, in_features = 36, 576  # 576 = 4.5 groups of 128: the int4 rows are padded
    weight = torch.randn(out_features, in_features) * 0.05
    b = torch.randn(out_features) if bias else None
    args, stored, decoded = _decoded(fmt, weight, group_size)
    in_bf16 = fmt == "int8" and group_size is not None and cpu_path and kernels.PATHS[cpu_path].bf16_products
    for rows in ROW_COUNTS:
        x = torch.randn(rows, in_features)
        got = kernels.linear(x, fmt, stored, out_features, b, **args)
        want = F.linear(_bf16(x), _bf16(decoded), b) if in_bf16 else F.linear(x, decoded, b)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"{rows} rows")


def _bf16(values: torch.Tensor) -> torch.Tensor:
    """Rounded to bf16 (to nearest even, as the kernel's conversion rounds) and back to float32."""
    return values.bfloat16().float()


@pytest.mark.parametrize("fmt", ["float32", "int8"])
@pytest.mark.parametrize("in_features", [8, 40, 96, 200])
def test_kernel_takes_rows_that_end_in_a_partial_vector_step(fmt, in_features):
    """Rows whose length is not a whole number of the widest steps (64 values on the avx512 path, 32 and 8 on
    the avx2 one) finish in the narrower loops."""
    torch.manual_seed(0)
    args, stored, decoded = _decoded(fmt, torch.randn(12, in_features) * 0.05, None)
    for rows in (1, 3, 9):
        x = torch.randn(rows, in_features)
        torch.testing.assert_close(kernels.linear(x, fmt, stored, 12, **args), F.linear(x, decoded), rtol=1e-5,
                                   atol=1e-4, msg=f"{rows} rows")


@pytest.mark.parametrize("in_features", [64, 96, 576, 608, 1536])  # 96, 608: an odd number of blocks of 32
def test_w8a8_kernel_equals_pytorch_on_the_rounded_activations(in_features):
    """int8 x int8 with int32 sums: exactly the float math on quant.quantize_activations' values, also for an
    outlier block (its row's other blocks keep their own range), an all-zero row and a row of tiny values."""
    torch.manual_seed(0)
    weight, bias = torch.randn(36, in_features) * 0.05, torch.randn(36)
    q, scales = quantize_int8(weight)
    decoded = dequantize_int8(q, scales, torch.float64)
    for rows in ROW_COUNTS:
        x = torch.randn(rows, in_features)
        x[0, :32] *= 100
        if rows > 2:
            x[1], x[2] = 0.0, x[2] * 1e-30
        got = kernels.linear(x, "w8a8", q, 36, bias, scales)
        want = F.linear(quantize_activations(x).double(), decoded, bias.double()).float()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"{rows} rows")


@pytest.mark.parametrize("in_features", [96, 1536, 8192])
def test_w8a8_int32_sums_do_not_overflow_at_full_scale(in_features):
    """Every product at its largest (|x| and |w| quantized to 127, signs agreeing, every block at its row's
    maximum): the int32 sums stay exact however the kernel groups them."""
    signs = torch.where(torch.arange(in_features) % 3 == 0, -1.0, 1.0)
    weight = torch.stack([signs, -signs, signs, signs]).repeat(2, 1)
    q, scales = quantize_int8(weight)
    x = torch.stack([signs, signs * 0.5, -signs, torch.ones(in_features)])
    for rows in (1, 4):
        got = kernels.linear(x[:rows], "w8a8", q, 8, None, scales)
        want = F.linear(quantize_activations(x[:rows]).double(), dequantize_int8(q, scales, torch.float64)).float()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"{rows} rows")


def test_kernel_keeps_leading_dimensions_and_takes_strided_input():
    weight = torch.randn(8, 64)
    x = torch.randn(64, 3, 2).transpose(0, 2)  # [2, 3, 64], not contiguous
    torch.testing.assert_close(kernels.linear(x, "float32", weight, 8), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert kernels.linear(torch.empty(0, 64), "float32", weight, 8).shape == (0, 8)


def test_grouped_scales_without_a_whole_block_group_size_are_refused():
    weight = torch.randn(8, 64)
    q, scales = quantize_int8(weight, 32)
    for group_size in (0, 16):
        with pytest.raises(ValueError, match="multiple of 32"):
            kernels.linear(torch.randn(1, 64), "int8", q, 8, scales=scales, group_size=group_size)


def test_w8a8_with_group_scales_is_refused():
    q, scales = quantize_int8(torch.randn(8, 64), 32)
    with pytest.raises(ValueError, match="one scale per row"):
        kernels.linear(torch.randn(1, 64), "w8a8", q, 8, scales=scales, group_size=32)
    with pytest.raises(ValueError, match="one scale per row"):
        Int8Linear(64, 8, bias=False, group_size=32, int8_activations=True)


def test_supports_only_shapes_and_inputs_the_kernel_takes():
    x = torch.randn(1, 64)
    assert kernels.supports(x, 64, 8, "int4")
    assert not kernels.supports(x, 64, 6, "int8")  # out_features not a multiple of 4 rows
    assert not kernels.supports(torch.randn(1, 40), 40, 8, "int4")  # in_features not a multiple of 32
    assert not kernels.supports(torch.randn(1, 40), 40, 8, "w8a8")
    assert not kernels.supports(x.bfloat16(), 64, 8, "float32")


@pytest.mark.parametrize("module_type", [Int8Linear, Int4Linear, KernelLinear])
def test_modules_fall_back_to_pytorch_for_shapes_the_kernel_does_not_take(module_type):
    torch.manual_seed(0)
    linear = nn.Linear(64, 6)  # 6 outputs: not a multiple of the kernel's 4-row blocks
    if module_type is KernelLinear:
        module, reference = KernelLinear(64, 6), linear.weight
        module.load_state_dict(linear.state_dict())
    elif module_type is Int8Linear:
        module = Int8Linear(64, 6, bias=True)
        q, scales = quantize_int8(linear.weight)
        module.load_state_dict({"weight": q, "scales": scales, "bias": linear.bias})
        reference = dequantize_int8(q, scales, torch.float32)
    else:
        module = Int4Linear(64, 6, bias=True, group_size=32)
        packed, scales, mins = quantize_int4(linear.weight, 32)
        module.load_state_dict({"weight": packed, "scales": scales, "mins": mins, "bias": linear.bias})
        reference = dequantize_int4(packed, scales, mins, 64, torch.float32)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), F.linear(x, reference, linear.bias), rtol=1e-5, atol=1e-5)


def test_w8a8_module_rounds_activations_like_the_kernel_on_the_pytorch_path():
    torch.manual_seed(0)
    module = Int8Linear(64, 6, bias=False, int8_activations=True)  # 6 outputs: the PyTorch path
    q, scales = quantize_int8(torch.randn(6, 64))
    module.load_state_dict({"weight": q, "scales": scales})
    x = torch.randn(3, 64)
    with torch.inference_mode():
        want = F.linear(quantize_activations(x), dequantize_int8(q, scales, torch.float32))
        torch.testing.assert_close(module(x), want, rtol=1e-5, atol=1e-5)


def test_model_logits_are_unchanged_by_the_kernels(tmp_path):
    """A tied model with kernel-friendly shapes: every linear and the tied head go through the kernel."""
    checkpoint = load_checkpoint(save_tiny_hf(tmp_path, vocab_size=260, tie_word_embeddings=True))
    model = quantized_model(checkpoint, QuantConfig("none"))
    ids = [1, 17, 200, 42, 99, 256, 3, 8]
    reference = logits_of(model, ids)
    use_cpu_kernels(model)
    assert all(type(module) is not nn.Linear for module in model.modules())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(logits_of(model, ids), reference, rtol=1e-4, atol=1e-4)


def test_kernels_can_be_switched_off():
    code = "from inference import kernels; print(kernels.enabled())"
    env = {**os.environ, "OPSLAB_CPU_KERNELS": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 32), (8, 1, 16)])
def test_paged_decode_attention_equals_softmax_attention_over_the_gathered_cache(heads, kv_heads, head_dim,
                                                                                  cache_dtype):
    """Float16 caches are widened exactly (F16C), so they match float32 attention over the same values."""
    torch.manual_seed(0)
    num_blocks, block_size = 64, 16
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim).to(cache_dtype)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim).to(cache_dtype)
    context_lens = torch.tensor([1, 7, 16, 17, 100, 33])  # one token, partial and whole blocks, many blocks
    tables = torch.randperm(num_blocks)[:6 * 7].reshape(6, 7)  # scattered blocks
    qk = torch.randn(10, heads + kv_heads, head_dim)  # queries are a view with a wider row, as in the model
    q = qk[:, :heads]
    rows = torch.tensor([9, 0, 4, 2, 7, 5])
    out = torch.full((10, heads, head_dim), float("nan"))
    kernels.paged_decode_attention(q, rows, (key_cache, value_cache), tables, context_lens, 100, out)
    for b, row in enumerate(rows.tolist()):
        n = int(context_lens[b])
        keys = key_cache[tables[b]].flatten(0, 1)[:n].float().repeat_interleave(heads // kv_heads, dim=1)  # [n, h, d]
        values = value_cache[tables[b]].flatten(0, 1)[:n].float().repeat_interleave(heads // kv_heads, dim=1)
        weights = torch.softmax(torch.einsum("hd,nhd->hn", q[row], keys) / head_dim ** 0.5, dim=-1)
        torch.testing.assert_close(out[row], torch.einsum("hn,nhd->hd", weights, values), rtol=1e-5, atol=1e-5)
    assert out[[1, 3, 6, 8]].isnan().all()  # rows of other tokens untouched


def test_attention_kernel_supports_only_what_it_takes():
    cache = torch.zeros(4, 16, 2, 64)
    assert kernels.supports_attention(torch.zeros(3, 6, 64), cache)
    assert kernels.supports_attention(torch.zeros(3, 6, 64), cache.half())  # a float16 cache, float32 queries
    assert not kernels.supports_attention(torch.zeros(3, 6, 64), cache.bfloat16())
    assert not kernels.supports_attention(torch.zeros(3, 6, 64, dtype=torch.bfloat16), cache.bfloat16())
    assert not kernels.supports_attention(torch.zeros(3, 18, 64), cache)  # 9 query heads per kv head
    assert not kernels.supports_attention(torch.zeros(3, 6, 12), torch.zeros(4, 16, 2, 12))  # head_dim % 8


def test_rotary_kernel_equals_the_pytorch_rotation():
    torch.manual_seed(0)
    qkv = torch.randn(5, 7, 32)
    x = qkv[:, :4]  # a view with a wider row, as the model rotates q and k inside the qkv output
    angles = torch.randn(5, 16).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    first, second = x.chunk(2, dim=-1)
    expected = x * cos[:, None] + torch.cat([-second, first], dim=-1) * sin[:, None]
    untouched = qkv[:, 4:].clone()
    assert kernels.supports_rotary(x, cos)
    torch.testing.assert_close(kernels.rotary(x, cos, sin), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, 4:], untouched)


def test_silu_mul_kernel_equals_pytorch():
    gate_up = torch.randn(3, 5, 96) * 6  # wide range: exp of large and small arguments
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_mul(gate_up), F.silu(gate) * up, rtol=1e-5, atol=1e-5)


def test_rms_norm_kernel_equals_pytorch():
    x, weight = torch.randn(7, 96) * 3, torch.randn(96)
    assert kernels.supports_elementwise(x)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), F.rms_norm(x, (96,), weight, 1e-5),
                               rtol=1e-5, atol=1e-5)
