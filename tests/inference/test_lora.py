"""LoRA merge: an engine built with a PEFT adapter gives the same logits as the base model running the
adapter unmerged (base(x) + scale * B(A(x)), PEFT's forward); scale is alpha/r or alpha/sqrt(r) (rsLoRA)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from weights_helpers import TINY_LLAMA, logits_of

from inference.build import build_engine, load_engine
from inference.lora import LoraError, merge_lora

RANK, ALPHA = 4, 8.0
TARGETS = ("q_proj", "v_proj", "down_proj")
SHAPES = {"q_proj": (64, 64), "v_proj": (32, 64), "down_proj": (64, 128)}  # (out, in) in the tiny model
PARENT = {"q_proj": "self_attn", "v_proj": "self_attn", "down_proj": "mlp"}


def write_adapter(directory, use_rslora: bool = False, seed: int = 1, **config_overrides) -> dict:
    """A PEFT-format adapter (as `PeftModel.save_pretrained` writes it); returns {module: (A, B)}."""
    generator = torch.Generator().manual_seed(seed)
    pairs, tensors = {}, {}
    for layer in range(TINY_LLAMA["num_hidden_layers"]):
        for target in TARGETS:
            out_features, in_features = SHAPES[target]
            module = f"model.layers.{layer}.{PARENT[target]}.{target}"
            lora_a = torch.randn(RANK, in_features, generator=generator) * 0.2
            lora_b = torch.randn(out_features, RANK, generator=generator) * 0.2
            pairs[module] = (lora_a, lora_b)
            tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a
            tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
              "target_modules": list(TARGETS), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": use_rslora, "base_model_name_or_path": "tiny-llama", **config_overrides}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return pairs


class UnmergedLora(nn.Module):
    """PEFT's LoRA forward around a frozen base linear."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.lora_a, self.lora_b, self.scale = base, lora_a, lora_b, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)


def hf_with_unmerged_lora(tiny_hf_dir, pairs: dict, scale: float):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_hf_dir).eval()
    for module, (lora_a, lora_b) in pairs.items():
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, UnmergedLora(getattr(parent, child), lora_a, lora_b, scale))
    return model


@pytest.mark.parametrize("use_rslora", [False, True], ids=["alpha/r", "rslora"])
def test_merged_engine_equals_unmerged_adapter(tmp_path, tiny_hf_dir, use_rslora):
    pairs = write_adapter(tmp_path / "adapter", use_rslora=use_rslora)
    scale = ALPHA / (math.sqrt(RANK) if use_rslora else RANK)
    spec = build_engine(tiny_hf_dir, tmp_path / "engine", lora=tmp_path / "adapter")
    _, merged, _ = load_engine(tmp_path / "engine")
    ids = [256, *range(40, 80)]
    with torch.inference_mode():
        expected = hf_with_unmerged_lora(tiny_hf_dir, pairs, scale)(torch.tensor([ids])).logits[0]
        base = hf_with_unmerged_lora(tiny_hf_dir, {}, scale)(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits_of(merged, ids), expected, rtol=1e-4, atol=1e-4)
    assert (expected - base).abs().max() > 0.1  # the adapter really changes the output
    assert spec.lora["num_merged_modules"] == len(pairs) and spec.lora["use_rslora"] is use_rslora


def test_merge_formula_per_weight(tmp_path):
    pairs = write_adapter(tmp_path)
    module = "model.layers.1.mlp.down_proj"
    base = {f"{m}.weight": torch.randn(*SHAPES[m.rsplit(".", 1)[1]]) for m in pairs}
    merged, info = merge_lora(base, tmp_path)
    lora_a, lora_b = pairs[module]
    expected = base[f"{module}.weight"] + (ALPHA / RANK) * lora_b @ lora_a
    torch.testing.assert_close(merged[f"{module}.weight"], expected)
    assert info["r"] == RANK and info["lora_alpha"] == ALPHA


def test_alpha_pattern_overrides_alpha_per_module(tmp_path):
    pairs = write_adapter(tmp_path, alpha_pattern={"v_proj": 2.0})
    merged, _ = merge_lora(_base_state_dict(pairs), tmp_path)
    for module, alpha in (("model.layers.0.self_attn.v_proj", 2.0), ("model.layers.0.self_attn.q_proj", ALPHA)):
        lora_a, lora_b = pairs[module]
        torch.testing.assert_close(merged[f"{module}.weight"], (alpha / RANK) * lora_b @ lora_a)


def _base_state_dict(pairs: dict) -> dict:
    return {f"{m}.weight": torch.zeros(*SHAPES[m.rsplit(".", 1)[1]]) for m in pairs}


@pytest.mark.parametrize(("breakage", "message"), [
    ("no_config", "no adapter_config.json"),
    ("no_weights", "no adapter_model.safetensors"),
    ("dora", "use_dora=True is not supported"),
    ("wrong_shape", "do not fit weight"),
    ("unknown_module", "which the base model does not have"),
    ("missing_dir", "does not exist"),
])
def test_bad_adapters_are_clear_errors(tmp_path, breakage, message):
    adapter = tmp_path / "adapter"
    pairs = write_adapter(adapter, use_dora=breakage == "dora")
    base = _base_state_dict(pairs)
    if breakage == "no_config":
        (adapter / "adapter_config.json").unlink()
    elif breakage == "no_weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif breakage == "wrong_shape":
        base["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 32)
    elif breakage == "unknown_module":
        del base["model.layers.1.mlp.down_proj.weight"]
    elif breakage == "missing_dir":
        adapter = tmp_path / "nope"
    with pytest.raises(LoraError, match=message):
        merge_lora(base, adapter)
