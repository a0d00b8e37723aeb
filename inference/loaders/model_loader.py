"""A model ready to serve, from any path the engine accepts: a built engine dir, a .gguf file or an HF dir."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from inference.build import load_engine, read_spec
from inference.config import EngineConfig, ModelConfig
from inference.loaders import load_checkpoint
from inference.model import LlamaForCausalLM, convert_hf_state_dict


def load_model(path: str | Path, **overrides) -> tuple[torch.nn.Module, object, EngineConfig, ModelConfig]:
    """(model, tokenizer, engine config, model config) from an engine dir, a .gguf file or an HF dir.

    An engine dir's recorded runtime settings apply, with `overrides` on top.
    """
    path = Path(path)
    config_path = path / "config.json"
    if config_path.is_file() and "model" in json.loads(config_path.read_text()):
        config = read_spec(path).engine_config(**overrides)
        spec, model, tokenizer = load_engine(path, config.device)
        return model, tokenizer, config, spec.model
    return _load_checkpoint(path, EngineConfig().replace(**overrides))


def _load_checkpoint(path: Path, config: EngineConfig):
    checkpoint = load_checkpoint(path)
    with torch.device("meta"):
        model = LlamaForCausalLM(checkpoint.config)
    model.load_state_dict(convert_hf_state_dict(checkpoint.state_dict, checkpoint.config), assign=True)
    return model, checkpoint.tokenizer, config, checkpoint.config
