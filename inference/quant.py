"""Weight-only quantization, in two phases (gpt-fast style).

Build time: `quantize_state_dict` turns selected linear weights into
  - int8: per-output-channel symmetric, `weight` int8 [out, in] + `scales` float32 [out];
  - int4: group-wise asymmetric (w = scale * q + min, q in 0..15, like GGUF Q4_1), two nibbles per byte:
    `weight` uint8 [out, in_padded / 2] + `scales`, `mins` float16 [out, in_padded / group_size].
    `in_padded` rounds in_features up to the group size (576 features with group 128 -> 640).
Run time: `convert_for_runtime` swaps those nn.Linear modules for Int8Linear / Int4Linear, which
dequantize to the activation dtype inside forward and keep the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

QUANT_MODES = ("none", "int8", "int4")
GROUP_SIZES = (32, 64, 128)
DEFAULT_SKIP = ("lm_head",)  # the output head decides every token: keep it in full precision


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """How the engine's linear weights are stored (recorded in the engine config as "quant")."""

    mode: str = "none"
    group_size: int = 128  # int4 only

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {self.mode!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group size must be one of {GROUP_SIZES}, got {self.group_size!r}")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "group_size": self.group_size}

    @classmethod
    def from_dict(cls, data: dict | None) -> QuantConfig:
        return cls(**(data or {}))


# ---- int8 ---------------------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (q int8 [out, in], scales float32 [out]) with weight ~= q * scales[:, None]."""
    weight = weight.float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return q.to(dtype) * scales.to(dtype)[:, None]


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
    """Two 4-bit values per byte: even columns in the low nibble, odd columns in the high nibble."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


NIBBLE_SHIFTS = torch.tensor([0, 4], dtype=torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, n] bytes -> [out, 2n] values in 0..15 (inverse of pack_int4)."""
    shifts = NIBBLE_SHIFTS.to(packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 0x0F).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, in_features: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """[out, in_features] weight in `dtype` from packed nibbles and per-group scale/min."""
    out_features, groups = scales.shape
    q = unpack_int4(packed).reshape(out_features, groups, -1).to(dtype)
    weight = torch.addcmul(mins.to(dtype)[..., None], q, scales.to(dtype)[..., None])  # min + q * scale
    return weight.reshape(out_features, -1)[:, :in_features]


# ---- runtime modules ----------------------------------------------------------------------------
class Int8Linear(nn.Module):
    """y = x @ W^T * scales (+ bias), with W stored as int8 and cast to x's dtype per call."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        weight = dequantize_int4(self.weight, self.scales, self.mins, self.in_features, x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))


# ---- the two phases -----------------------------------------------------------------------------
def linear_names(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[str]:
    """Names of the model's nn.Linear modules, minus those whose name ends with a `skip` entry."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith(skip)]


def quantize_state_dict(state_dict: dict[str, torch.Tensor], config: QuantConfig,
                        names: list[str]) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` with `{name}.weight` of each module in `names` quantized (biases kept)."""
    if config.mode == "none":
        return dict(state_dict)
    quantized = dict(state_dict)
    for name in names:
        weight = quantized.pop(f"{name}.weight")
        if config.mode == "int8":
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
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _quantized_like(getattr(parent, child), config))
    return model


def _quantized_like(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    args = (linear.in_features, linear.out_features, linear.bias is not None)
    device = linear.weight.device
    if config.mode == "int8":
        return Int8Linear(*args, device=device)
    return Int4Linear(*args, group_size=config.group_size, device=device)
