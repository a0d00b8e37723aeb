"""Our Llama model against Hugging Face transformers and torch.nn.MultiheadAttention, on the same weights."""
from __future__ import annotations

import pytest
import torch
from tiny_llama import LLAMA3_SCALING, hf_greedy, hf_tiny, ours_from_hf, random_prompts, tiny_llm

from inference.attention import allocate_kv_caches, build_attention_metadata, dense_metadata
from inference.config import ModelConfig, SamplingParams
from inference.model import Attention, LlamaForCausalLM, convert_hf_state_dict

VARIANTS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2),
    "mqa-tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "gqa-llama3-rope": dict(num_key_value_heads=2, rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING}),
    "linear-rope-bias": dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                             attention_bias=True, mlp_bias=True),
}


def _our_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    batch, length = ids.shape
    with torch.inference_mode():
        hidden = model(ids.flatten(), torch.arange(length).repeat(batch), None, dense_metadata([length] * batch))
        return model.compute_logits(hidden).view(batch, length, -1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_hf(variant):
    hf = hf_tiny(**VARIANTS[variant])
    ours = ours_from_hf(hf)
    ids = torch.tensor(random_prompts([48, 48]))
    with torch.inference_mode():
        expected = hf(ids).logits
    torch.testing.assert_close(_our_logits(ours, ids), expected, atol=1e-4, rtol=1e-4)


def test_rope_scaling_changes_logits():
    """Guards the parity test above: scaling must matter at these positions, or the llama3 case proves nothing."""
    ids = torch.tensor(random_prompts([64]))
    plain = _our_logits(ours_from_hf(hf_tiny(rope_parameters={"rope_theta": 500000.0})), ids)
    scaled = _our_logits(ours_from_hf(hf_tiny(rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING})), ids)
    assert (plain - scaled).abs().max() > 1e-2


def test_paged_chunked_forward_matches_hf():
    """Prefill in chunks through a paged cache with scattered blocks; every chunk's logits equal HF's."""
    hf = hf_tiny()
    ours = ours_from_hf(hf)
    config = ours.config
    prompt = random_prompts([23])[0]
    block_size, block_table = 4, [5, 2, 7, 0, 3, 6]
    caches = allocate_kv_caches(config.num_hidden_layers, 8, block_size, config.num_key_value_heads,
                                config.head_dim, torch.float32, "cpu")
    with torch.inference_mode():
        expected = hf(torch.tensor([prompt])).logits[0]
        for start, stop in ((0, 9), (9, 10), (10, 23)):
            span = range(start, stop)
            slots = [block_table[p // block_size] * block_size + p % block_size for p in span]
            meta = build_attention_metadata([len(span)], [stop], [block_table], slots, block_size, "cpu")
            hidden = ours(torch.tensor(prompt[start:stop]), torch.tensor(list(span)), caches, meta)
            torch.testing.assert_close(ours.compute_logits(hidden), expected[start:stop], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["gqa", "mqa-tied"])
def test_greedy_generation_matches_hf(variant):
    hf = hf_tiny(**VARIANTS[variant])
    prompts = random_prompts([3, 11, 26, 40])
    expected = [hf_greedy(hf, prompt, 16) for prompt in prompts]
    outputs = tiny_llm(hf).generate(prompts, SamplingParams(temperature=0, max_tokens=16))
    assert [out.token_ids for out in outputs] == expected
    assert len({tuple(tokens) for tokens in expected}) == len(prompts)


def test_attention_core_matches_multihead_attention():
    """MHA case without rotary embedding: fused in-projection → SDPA → out-projection == nn.MultiheadAttention."""
    torch.manual_seed(0)
    embed_dim, heads, length = 32, 4, 10
    reference = torch.nn.MultiheadAttention(embed_dim, heads, bias=True, batch_first=True).eval()
    ours = Attention(embed_dim, heads, heads, embed_dim // heads, bias=True).eval()
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(reference.in_proj_weight)
        ours.qkv_proj.bias.copy_(reference.in_proj_bias)
        ours.o_proj.weight.copy_(reference.out_proj.weight)
        ours.o_proj.bias.copy_(reference.out_proj.bias)
    x = torch.randn(2, length, embed_dim)
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # True = masked out
    with torch.inference_mode():
        expected, _ = reference(x, x, x, attn_mask=causal, need_weights=False)
        got = ours(x.flatten(0, 1), None, None, dense_metadata([length, length])).view(2, length, embed_dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_convert_rejects_partial_projection_sets():
    hf = hf_tiny()
    config = ModelConfig.from_dict(hf.config.to_dict())
    state_dict = dict(hf.state_dict())
    del state_dict["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match="only some"):
        convert_hf_state_dict(state_dict, config)


def test_smollm2_shape_builds_on_meta_and_runs():
    """SmolLM2-135M's shape (30 layers, 9 heads / 3 KV heads, head_dim 64, tied, theta 1e5) end to end on meta."""
    config = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True)
    meta = dense_metadata([4, 3], "meta")  # built on the CPU, then moved
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
        hidden = model(torch.zeros(7, dtype=torch.long), torch.arange(7), None, meta)
        logits = model.compute_logits(hidden)
    assert config.head_dim == 64 and model.lm_head is None
    assert "lm_head.weight" not in model.state_dict()
    assert logits.shape == (7, 49152)
    qkv = model.model.layers[0].self_attn.qkv_proj.weight
    assert qkv.shape == ((9 + 2 * 3) * 64, 576)
