"""Tiny random Llama models shared by the engine tests: an HF reference and our model with the same weights."""
from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

from inference.config import EngineConfig, ModelConfig
from inference.llm import LLM
from inference.model import LlamaForCausalLM, convert_hf_state_dict

torch.set_num_threads(1)  # tiny matrices: a second thread only adds spin-waits on the shared 2-core box

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}


def hf_tiny(seed: int = 0, weight_std: float = 0.25, **overrides) -> HFLlama:
    """A random HF LlamaForCausalLM (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 300 unless overridden).

    Weights are drawn wider than HF's init so attention is sharp and greedy paths differ between prompts.
    """
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    kwargs.update(overrides)
    model = HFLlama(LlamaConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, weight_std)
    return model


def ours_from_hf(hf_model: HFLlama, on_meta: bool = True) -> LlamaForCausalLM:
    """Our model with the HF model's weights (built on the meta device, loaded with assign=True)."""
    config = ModelConfig.from_dict(hf_model.config.to_dict())
    if on_meta:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    else:
        model = LlamaForCausalLM(config)
    state_dict = {k: v.clone() for k, v in hf_model.state_dict().items()}
    model.load_state_dict(convert_hf_state_dict(state_dict, config), assign=on_meta)
    return model.eval()


def tiny_llm(hf_model: HFLlama, tokenizer=None, **engine_options) -> LLM:
    options = dict(kv_block_size=4, max_num_batched_tokens=32, max_num_seqs=8, kv_cache_bytes=4 * 2**20)
    options.update(engine_options)
    return LLM.from_model(ours_from_hf(copy.deepcopy(hf_model)), tokenizer, EngineConfig(**options))


def random_prompts(lengths: list[int], vocab: int = 300, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(hf_model: HFLlama, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()
