"""Merge a PEFT LoRA adapter into Hugging Face-named base weights at build time.

An adapter directory holds `adapter_config.json` (r, lora_alpha, target_modules, optional use_rslora /
alpha_pattern) and `adapter_model.safetensors` with keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` ([r, in]) and `...lora_B.weight` ([out, r]).
Merging computes W += scale * B @ A with scale = alpha / r (alpha / sqrt(r) with rsLoRA).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

KEY_PATTERN = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[\w-]+)?\.weight")
UNSUPPORTED = {"use_dora": True, "fan_in_fan_out": True}


class LoraError(ValueError):
    """The adapter directory is missing, malformed or does not fit the base model."""


@dataclass(frozen=True, slots=True)
class LoraConfig:
    """The adapter_config.json fields that decide the merge."""

    r: int
    lora_alpha: float
    target_modules: list[str] | str
    use_rslora: bool = False
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> LoraConfig:
        path = directory / "adapter_config.json"
        if not path.is_file():
            raise LoraError(f"{directory}: no adapter_config.json (not a PEFT LoRA adapter directory)")
        data = json.loads(path.read_text())
        for key, bad in UNSUPPORTED.items():
            if data.get(key) == bad:
                raise LoraError(f"{path}: {key}={bad} is not supported")
        if data.get("peft_type", "LORA") != "LORA" or "r" not in data or "lora_alpha" not in data:
            raise LoraError(f"{path}: expected a LORA config with r and lora_alpha")
        return cls(int(data["r"]), float(data["lora_alpha"]), data.get("target_modules") or [],
                   bool(data.get("use_rslora", False)), dict(data.get("alpha_pattern") or {}))

    def scale(self, module: str, rank: int) -> float:
        """alpha / r for `module` (alpha_pattern overrides alpha; rank comes from the A matrix)."""
        alpha = next((a for key, a in self.alpha_pattern.items() if re.fullmatch(rf"(.*\.)?{key}", module)),
                     self.lora_alpha)
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def to_dict(self) -> dict:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "target_modules": self.target_modules,
                "use_rslora": self.use_rslora, "alpha_pattern": self.alpha_pattern}


def load_adapter(directory: str | Path) -> tuple[LoraConfig, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The adapter's config and {HF module name: (A [r, in], B [out, r])}."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LoraError(f"{directory}: LoRA adapter directory does not exist")
    config = LoraConfig.load(directory)
    weights_path = directory / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise LoraError(f"{directory}: no adapter_model.safetensors")
    return config, _pair_up(load_file(weights_path), weights_path)


def _pair_up(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = KEY_PATTERN.fullmatch(key)
        if not match:
            raise LoraError(f"{path}: unexpected tensor {key!r} (only lora_A / lora_B weights are supported)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    incomplete = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if incomplete:
        raise LoraError(f"{path}: lora_A or lora_B missing for {incomplete[0]}")
    return {module: (p["A"], p["B"]) for module, p in parts.items()}


def merge_lora(state_dict: dict[str, torch.Tensor], directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A copy of `state_dict` with the adapter merged (W += scale * B @ A), and a summary for the engine config."""
    config, pairs = load_adapter(directory)
    merged = dict(state_dict)
    for module, (lora_a, lora_b) in sorted(pairs.items()):
        key = f"{module}.weight"
        if key not in merged:
            raise LoraError(f"{directory}: adapter targets {module}, which the base model does not have")
        merged[key] = merge_weight(merged[key], lora_a, lora_b, config.scale(module, lora_a.shape[0]), module)
    return merged, {"path": str(directory), **config.to_dict(), "num_merged_modules": len(pairs)}


def merge_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                 module: str) -> torch.Tensor:
    """weight + scale * B @ A, computed in float32 and returned in weight's dtype."""
    if lora_a.shape[0] != lora_b.shape[1] or (lora_b.shape[0], lora_a.shape[1]) != tuple(weight.shape):
        raise LoraError(f"{module}: LoRA shapes A{tuple(lora_a.shape)} B{tuple(lora_b.shape)} "
                        f"do not fit weight {tuple(weight.shape)}")
    delta = lora_b.float() @ lora_a.float()
    return (weight.float() + scale * delta).to(weight.dtype)
