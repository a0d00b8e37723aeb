"""Helpers shared by the engine-weights tests: a tiny HF Llama on disk, our model's logits and greedy tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.attention import dense_metadata
from inference.build import engine_state_dict
from inference.model import LlamaForCausalLM
from inference.quant import QuantConfig, convert_for_runtime, quantized_names
from inference.tokenizer import Tokenizer

TINY_LLAMA = dict(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)


def save_tiny_hf(directory: Path, seed: int = 0, max_shard_size: str = "1GB", **overrides) -> Path:
    """A random HF LlamaForCausalLM saved with save_pretrained, plus the byte-level test tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.25)  # wider than HF's init, so logits differ clearly between tokens
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    Tokenizer.byte_level().save(directory)
    return directory


def logits_of(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of our model for one sequence (no KV cache)."""
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), None, dense_metadata([len(ids)]))
        return model.compute_logits(hidden)


def greedy_of(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by full recomputation (slow but independent of the KV cache and scheduler)."""
    ids = list(ids)
    for _ in range(max_new_tokens):
        ids.append(int(logits_of(model, ids)[-1].argmax()))
    return ids[-max_new_tokens:]


def quantized_model(checkpoint, config: QuantConfig) -> LlamaForCausalLM:
    """The model build + load_engine would produce for `checkpoint`, without touching the disk."""
    state_dict = engine_state_dict(checkpoint.state_dict, checkpoint.config, torch.float32, config)
    with torch.device("meta"):
        model = LlamaForCausalLM(checkpoint.config)
    convert_for_runtime(model, config, quantized_names(state_dict))
    model.load_state_dict(state_dict, assign=True)
    return model.eval()
