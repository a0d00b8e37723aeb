"""Checkpoint loading: a GGUF file or a Hugging Face directory -> config + HF-named tensors + tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from inference.config import ModelConfig
    from inference.tokenizer import Tokenizer


@dataclass(slots=True)
class Checkpoint:
    """A model as read from disk: its shape, its weights under Hugging Face Llama names, its tokenizer."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: Path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a `.gguf` file or an HF directory (config.json + *.safetensors + tokenizer.json)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from inference.loaders.gguf import load_gguf

        return load_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        from inference.loaders.safetensors import load_hf_dir

        return load_hf_dir(path)
    raise ValueError(f"{path}: not a .gguf file or a directory with config.json")
