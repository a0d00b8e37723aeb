"""Read a llama.cpp GGUF checkpoint (Llama architecture).

Config and tokenizer come from the metadata; tensors are dequantized to float32 and renamed to Hugging
Face Llama names. convert_hf_to_gguf.py permutes the rows of q/k projections for llama.cpp's rope
(interleaved pairs); we permute them back, so HF's rotate_half rope gives the same logits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from inference.config import ModelConfig
from inference.loaders import Checkpoint
from inference.tokenizer import Tokenizer

SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q8_0,
}

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

BLOCK_PATTERN = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# Big arrays the tokenizer needs; every other array-valued key is skipped when reading metadata.
TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")


def load_gguf(path: Path) -> Checkpoint:
    """Config, HF-named float32 tensors and tokenizer of a Llama GGUF file."""
    reader = GGUFReader(path)
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
    tensor_names = {t.name for t in reader.tensors}
    config = ModelConfig.from_dict(config_dict(metadata, tensor_names))
    state_dict = {hf_name(t.name): _to_hf_layout(t.name, dequantize(t), config) for t in reader.tensors}
    return Checkpoint(config, state_dict, Tokenizer.from_gguf_metadata(metadata), path)


def read_config(path: Path) -> ModelConfig:
    """A GGUF file's model config from its metadata alone (no tensor data is read)."""
    reader = GGUFReader(path)
    return ModelConfig.from_dict(config_dict(read_metadata(reader), {t.name for t in reader.tensors}))


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Metadata key -> Python value (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def config_dict(metadata: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """HF config.json fields from llama.* metadata keys."""
    if "rope_freqs.weight" in tensor_names:
        raise ValueError("GGUF with a rope_freqs tensor (llama3 rope scaling) is not supported")
    get = lambda key, default=None: metadata.get(f"llama.{key}", default)  # noqa: E731
    num_heads = get("attention.head_count")
    hidden = get("embedding_length")
    return {
        "vocab_size": get("vocab_size") or len(metadata["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": get("attention.head_count_kv", num_heads),
        "head_dim": get("attention.key_length", hidden // num_heads),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "rope_scaling": rope_scaling(metadata),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
    }


def rope_scaling(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """HF rope_scaling dict from llama.rope.scaling.* keys (None when absent or 'none')."""
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return None
    scaling = {"rope_type": kind, "factor": metadata.get("llama.rope.scaling.factor", 1.0)}
    original = metadata.get("llama.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> HF Llama name (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`)."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    match = BLOCK_PATTERN.fullmatch(gguf_name)
    if not match or match.group(2) not in BLOCK_NAMES:
        raise ValueError(f"unknown GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{BLOCK_NAMES[part]}.{kind}"


def dequantize(tensor) -> torch.Tensor:
    """A GGUF reader tensor as float32 torch tensor in PyTorch order ([out, in] for a matrix)."""
    qtype = GGMLQuantizationType(tensor.tensor_type)
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"tensor {tensor.name}: GGML type {qtype.name} is not supported")
    values = gguf_dequantize(tensor.data.view(np.ndarray), qtype)  # plain view: memmap indexing is slow
    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest dimension first
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a copy: the mmap is read-only


def unpermute_rope(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo convert_hf_to_gguf's `permute`: rows per head go from interleaved pairs back to two halves."""
    rows = weight.shape[0]
    pairs = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return pairs.transpose(1, 2).reshape(weight.shape).contiguous()


def _to_hf_layout(name: str, weight: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    if ".attn_q." in name:
        return unpermute_rope(weight, config.num_attention_heads)
    if ".attn_k." in name:
        return unpermute_rope(weight, config.num_key_value_heads)
    return weight
