"""Weight quantization, in two phases (gpt-fast style).

Build time: `quantize_state_dict` turns selected linear weights into
  - int8: per-output-channel symmetric, `weight` int8 [out, in] + `scales` float32 [out];
  - w8a8: int8's weights; at run time the activations going into each linear layer are quantized too,
    per block of 32 values (symmetric, a scale per block, like GGUF's Q8_0 which llama.cpp applies to
    activations on CPUs; see quantize_activations), so the matmul is int8 x int8. Not weight-only: it
    trades a little accuracy (tests/inference/test_quant.py) for ~1.5x the multiply-adds per cycle of
    float32 on AVX2;
  - int4: group-wise asymmetric (w = scale * q + min, q in 0..15, like GGUF Q4_1), two nibbles per byte:
    `weight` uint8 [out, in_padded / 2] + `scales`, `mins` float16 [out, in_padded / group_size].
    `in_padded` rounds in_features up to the group size (576 features with group 128 -> 640).
The output head (also when it is tied to the embedding) is stored as int8 with one scale per 32 weights
(GGUF's Q8_0 code) in every mode unless `quantize_head` is off: it is a fifth of SmolLM2's weights and
every decode step reads all of it; SmolLM2's embedding is Q8_0 already, so this loses nothing there. The
head keeps float activations in w8a8 too (int8 ones cost SmolLM2 about a point of top-1 agreement and
saved ~1.5 % of a decode step). On CPUs with AVX512_BF16 the kernels multiply the head in bf16 (x and the
decoded weights rounded to bf16, sums in float32): twice the products per instruction, and SmolLM2's top-1
agreement and perplexity stay within their noise (docs/performance.md).
Run time: `convert_for_runtime` swaps those nn.Linear modules for Int8Linear / Int4Linear. On a CPU with
float32 activations they run the fused AVX2 kernel (inference/kernels), which decodes the weights inside
the matmul (in w8a8: quantizes the activations and multiplies int8 by int8); elsewhere they dequantize to
the activation dtype and call F.linear (w8a8 first rounds the activations the way the kernel does).
`use_cpu_kernels` gives float32 nn.Linear layers the same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inference import kernels

QUANT_MODES = ("none", "int8", "int4", "w8a8")
ACTIVATION_BLOCK = 32  # w8a8: activations per scale
GROUP_SIZES = (32, 64, 128)
HEAD = "lm_head"
HEAD_GROUP_SIZE = 32
DEFAULT_SKIP = (HEAD,)  # the head is not quantized with the mode's format (see quantize_head)


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """How the engine's linear weights are stored (recorded in the engine config as "quant")."""

    mode: str = "none"
    group_size: int = 128  # int4 only
    quantize_head: bool = True  # int8 output head in the int8, int4 and w8a8 modes

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {self.mode!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group size must be one of {GROUP_SIZES}, got {self.group_size!r}")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "group_size": self.group_size, "quantize_head": self.quantize_head}

    @classmethod
    def from_dict(cls, data: dict | None) -> QuantConfig:
        return cls(**(data or {}))


# ---- int8 ---------------------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: (q int8 [out, in], scales float32) with weight ~= q * scale; one scale per row
    (scales [out]) or per group of `group_size` weights in a row (scales [out, in / group_size])."""
    weight = weight.float()
    groups = weight.reshape(weight.shape[0], -1, group_size or weight.shape[1])
    scales = groups.abs().amax(dim=2).clamp(min=1e-8) / 127.0
    q = torch.round(groups / scales[..., None]).clamp(-127, 127).to(torch.int8).reshape(weight.shape)
    return q, scales.squeeze(1) if group_size is None else scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    groups = q.reshape(q.shape[0], scales.reshape(q.shape[0], -1).shape[1], -1)
    return (groups.to(dtype) * scales.to(dtype).reshape(q.shape[0], -1, 1)).reshape(q.shape)


def multiplier_bits(width: int) -> int:
    """Bits of the w8a8 block multipliers for rows of `width` values (linear.h's multiplier_bits): the most,
    up to 14, that keep the kernel's int32 sums (width / 8 products of at most 127 * 127 per lane, times a
    multiplier) from overflowing."""
    bits = 0
    while bits < 14 and (width // 8) * 127 * 127 * 2 ** (bits + 1) < 2**31 - 1:
        bits += 1
    return bits


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """float32 x rounded the way the w8a8 kernel rounds it, and scaled back. Per row: scale = max |x| /
    (127 * 2^bits); per block of ACTIVATION_BLOCK values: an integer multiplier = ceil(2^bits * block max /
    row max) and int8 values = round(x / (scale * multiplier)). So each block gets its own int8 range (like
    GGUF's Q8_0), and its scale is an integer multiple of the row's, which lets the kernel sum a whole row in
    int32."""
    width = x.shape[-1]
    padded = -(-width // ACTIVATION_BLOCK) * ACTIVATION_BLOCK
    blocks = F.pad(x.float(), (0, padded - width)).reshape(*x.shape[:-1], -1, ACTIVATION_BLOCK)
    steps = float(2 ** multiplier_bits(padded))
    block_max = blocks.abs().amax(dim=-1, keepdim=True)
    row_max = block_max.amax(dim=-2, keepdim=True)
    empty = row_max == 0
    safe_max = torch.where(empty, 1.0, row_max)
    multipliers = torch.where(empty, 1.0, torch.ceil(steps * block_max / safe_max).clamp(min=1.0))
    q = torch.round(blocks * torch.where(empty, 0.0, 127.0 * steps / (safe_max * multipliers)))
    rounded = q * multipliers * (row_max / (127.0 * steps))
    return rounded.reshape(*x.shape[:-1], padded)[..., :width].to(x.dtype)


# ---- int4 ---------------------------------------------------------------------------------------
def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric int4: (packed uint8 [out, in_padded/2], scales, mins float16 [out, groups])."""
    out_features, in_features = weight.shape
    padded = -(-in_features // group_size) * group_size
    groups = F.pad(weight.float(), (0, padded - in_features)).reshape(out_features, -1, group_size)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scales = ((high - low) / 15.0).to(torch.float16)
    mins = low.to(torch.float16)
    safe = scales.float().clamp(min=1e-8)[..., None]
    q = torch.round((groups - mins.float()[..., None]) / safe).clamp(0, 15).to(torch.uint8)
    return pack_int4(q.reshape(out_features, padded)), scales, mins


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit values per byte, in blocks of 32 values (16 bytes): byte i of a block holds value i in its
    low nibble and value i + 16 in its high nibble (GGUF's Q4 layout; the AVX2 kernel unpacks 8 at a time)."""
    blocks = q.reshape(q.shape[0], -1, 2, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(q.shape[0], -1)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, n] bytes -> [out, 2n] values in 0..15 (inverse of pack_int4)."""
    blocks = packed.reshape(packed.shape[0], -1, 1, 16)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=2).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, in_features: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """[out, in_features] weight in `dtype` from packed nibbles and per-group scale/min."""
    out_features, groups = scales.shape
    q = unpack_int4(packed).reshape(out_features, groups, -1).to(dtype)
    weight = torch.addcmul(mins.to(dtype)[..., None], q, scales.to(dtype)[..., None])  # min + q * scale
    return weight.reshape(out_features, -1)[:, :in_features]


# ---- runtime modules ----------------------------------------------------------------------------
class Int8Linear(nn.Module):
    """y = x @ (W * scales)^T (+ bias), W stored as int8 with a scale per row or per group of a row; with
    `int8_activations` (w8a8, a scale per row only), x is rounded to int8 per block of 32 first."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int | None = None,
                 int8_activations: bool = False, device=None) -> None:
        super().__init__()
        if int8_activations and group_size is not None:
            raise ValueError("int8 activations take int8 weights with one scale per row")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.int8_activations = int8_activations
        scales_shape = (out_features,) if group_size is None else (out_features, in_features // group_size)
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(scales_shape, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = "w8a8" if self.int8_activations else "int8"
        if self.scales.dtype == torch.float32 and kernels.supports(x, self.in_features, self.out_features, fmt):
            return kernels.linear(x, fmt, self.weight, self.out_features, self.bias, self.scales,
                                  group_size=self.group_size or 0)
        if self.int8_activations:
            x = quantize_activations(x)
        if self.group_size is not None:
            weight = dequantize_int8(self.weight, self.scales, x.dtype)
            return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
        y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int4Linear(nn.Module):
    """y = x @ dequant(W)^T (+ bias), W stored as packed nibbles with a scale and min per group."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = -(-in_features // group_size)
        packed_shape = (out_features, groups * group_size // 2)
        self.register_buffer("weight", torch.empty(packed_shape, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer("mins", torch.empty(out_features, groups, dtype=torch.float16, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales.dtype == torch.float32 and kernels.supports(x, self.in_features, self.out_features, "int4"):
            return kernels.linear(x, "int4", self.weight, self.out_features, self.bias, self.scales, self.mins,
                                  self.group_size)
        weight = dequantize_int4(self.weight, self.scales, self.mins, self.in_features, x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))


class KernelLinear(nn.Linear):
    """nn.Linear whose float32 CPU forward runs the fused kernel for up to MAX_ROWS rows (faster than MKL
    for the few rows of a decode step and for a wide output head; MKL wins on long prefills)."""

    MAX_ROWS = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.weight.dtype == torch.float32 and x.numel() <= self.MAX_ROWS * self.in_features
                and kernels.supports(x, self.in_features, self.out_features, "float32")):
            return kernels.linear(x, "float32", self.weight, self.out_features, self.bias)
        return super().forward(x)


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Give every float32 nn.Linear (and a head tied to the embedding) the fused kernel, sharing weights."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            _replace(model, name, _kernel_linear(module.weight, module.bias))
    if getattr(model, HEAD, False) is None:  # tied: the head is the embedding matrix
        setattr(model, HEAD, _kernel_linear(model.model.embed_tokens.weight, None))
    return model


def _kernel_linear(weight: nn.Parameter, bias: nn.Parameter | None) -> KernelLinear:
    with torch.device("meta"):
        linear = KernelLinear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = weight
    if bias is not None:
        linear.bias = bias
    return linear


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


# ---- the two phases -----------------------------------------------------------------------------
def linear_names(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[str]:
    """Names of the model's nn.Linear modules, minus those whose name ends with a `skip` entry."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith(skip)]


def head_group_size(in_features: int) -> int | None:
    """Q8_0-style groups for the head, or one scale per row when the width is not a multiple of them."""
    return HEAD_GROUP_SIZE if in_features % HEAD_GROUP_SIZE == 0 else None


def quantize_state_dict(state_dict: dict[str, torch.Tensor], config: QuantConfig,
                        names: list[str]) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` with `{name}.weight` of each module in `names` quantized (biases kept), plus
    an int8 `lm_head` (made from the embedding when the head is tied) if `config.quantize_head`."""
    if config.mode == "none":
        return dict(state_dict)
    quantized = dict(state_dict)
    if config.quantize_head:
        head = quantized.pop(f"{HEAD}.weight", state_dict.get("model.embed_tokens.weight"))
        if head is not None:  # (a state dict of single layers has neither)
            quantized[f"{HEAD}.weight"], quantized[f"{HEAD}.scales"] = quantize_int8(
                head, head_group_size(head.shape[1]))
    for name in names:
        weight = quantized.pop(f"{name}.weight")
        if config.mode in ("int8", "w8a8"):
            quantized[f"{name}.weight"], quantized[f"{name}.scales"] = quantize_int8(weight)
        else:
            packed, scales, mins = quantize_int4(weight, config.group_size)
            quantized.update({f"{name}.weight": packed, f"{name}.scales": scales, f"{name}.mins": mins})
    return quantized


def quantized_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Module names that carry quantized weights in a saved state dict."""
    return [key.removesuffix(".scales") for key in state_dict if key.endswith(".scales")]


def convert_for_runtime(model: nn.Module, config: QuantConfig, names: list[str]) -> nn.Module:
    """Swap the named nn.Linear modules for quantized ones (in place, on the weight's device; meta is fine)."""
    if config.mode == "none":
        return model
    device, int8_activations = next(model.parameters()).device, config.mode == "w8a8"
    for name in names:
        if name == HEAD:  # weight-only int8 in every mode; a tied model has no head module yet
            hidden = model.config.hidden_size
            head = Int8Linear(hidden, model.config.vocab_size, bias=False, group_size=head_group_size(hidden),
                              device=device)
            _replace(model, name, head)
            continue
        linear = model.get_submodule(name)
        args = (linear.in_features, linear.out_features, linear.bias is not None)
        _replace(model, name, Int4Linear(*args, group_size=config.group_size, device=device) if config.mode == "int4"
                 else Int8Linear(*args, int8_activations=int8_activations, device=device))
    return model
