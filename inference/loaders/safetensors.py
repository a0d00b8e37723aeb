"""Read a Hugging Face Llama directory: config.json, model*.safetensors (single or sharded), tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from inference.config import ModelConfig
from inference.loaders import Checkpoint
from inference.tokenizer import Tokenizer

INDEX_FILE = "model.safetensors.index.json"


def load_hf_dir(directory: Path) -> Checkpoint:
    """Config, HF-named tensors (dtype as stored) and tokenizer of an HF model directory."""
    config = ModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
    if not (directory / "tokenizer.json").is_file():
        raise ValueError(f"{directory}: no tokenizer.json")
    return Checkpoint(config, load_tensors(directory), Tokenizer.load(directory), directory)


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files, merged into one dict."""
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shard_files(directory):
        state_dict.update(load_file(shard))
    return state_dict


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files: those named by the sharded index, else model.safetensors."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{directory}: no model.safetensors or {INDEX_FILE}")
    return [single]
