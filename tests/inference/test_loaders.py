"""Checkpoint loaders: GGUF dequantization vs a hand-written reference, name mapping, rope un-permutation,
HF directories (single and sharded), and SmolLM2 against transformers' own GGUF loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from weights_helpers import TINY_LLAMA, greedy_of, logits_of, save_tiny_hf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter

from inference.loaders import load_checkpoint
from inference.loaders.gguf import dequantize, hf_name
from inference.tokenizer import bytes_to_unicode

ROWS, COLS = 3, 64  # two 32-element blocks per row


# ---- reference dequantization, written from ggml's block layouts --------------------------------
def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    return raw.reshape(-1, block_bytes)


def _f16(block: np.ndarray, offset: int) -> float:
    return float(block[offset:offset + 2].copy().view(np.float16)[0])


def reference_q4_0(raw: np.ndarray) -> list[float]:
    """Block: f16 d, 16 bytes; element j = (low nibble of byte j) - 8, element j+16 = (high nibble) - 8; times d."""
    out = []
    for block in _blocks(raw, 18):
        d, qs = _f16(block, 0), block[2:]
        out += [((int(b) & 0xF) - 8) * d for b in qs] + [((int(b) >> 4) - 8) * d for b in qs]
    return out


def reference_q4_1(raw: np.ndarray) -> list[float]:
    """Block: f16 d, f16 m, 16 bytes; element = nibble * d + m (same nibble order as Q4_0)."""
    out = []
    for block in _blocks(raw, 20):
        d, m, qs = _f16(block, 0), _f16(block, 2), block[4:]
        out += [(int(b) & 0xF) * d + m for b in qs] + [(int(b) >> 4) * d + m for b in qs]
    return out


def reference_q8_0(raw: np.ndarray) -> list[float]:
    """Block: f16 d, 32 int8; element = q * d."""
    out = []
    for block in _blocks(raw, 34):
        d = _f16(block, 0)
        out += [int(q) * d for q in block[2:].copy().view(np.int8)]
    return out


def _random_blocks(rng: np.random.Generator, scale_bytes: int, quant_bytes: int) -> np.ndarray:
    """Random quant bytes with sane f16 scales (|d| around 0.01..0.1) in front of each block."""
    num_blocks = ROWS * COLS // 32
    scales = rng.uniform(0.01, 0.1, (num_blocks, scale_bytes // 2)).astype(np.float16).view(np.uint8)
    quants = rng.integers(0, 256, (num_blocks, quant_bytes), dtype=np.uint8)
    return np.concatenate([scales, quants], axis=1).reshape(ROWS, -1)


QUANT_CASES = {
    Q.Q4_0: (lambda rng: _random_blocks(rng, 2, 16), reference_q4_0),
    Q.Q4_1: (lambda rng: _random_blocks(rng, 4, 16), reference_q4_1),
    Q.Q8_0: (lambda rng: _random_blocks(rng, 2, 32), reference_q8_0),
}


def _read_back(tmp_path, array: np.ndarray, raw_dtype: Q | None):
    """Write one tensor into a GGUF file and return the reader's tensor object."""
    writer = GGUFWriter(tmp_path / "t.gguf", "llama")
    writer.add_tensor("blk.0.ffn_up.weight", array, raw_dtype=raw_dtype)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        step()
    writer.close()
    return GGUFReader(tmp_path / "t.gguf").tensors[0]


@pytest.mark.parametrize("qtype", list(QUANT_CASES), ids=lambda q: q.name)
def test_quantized_blocks_match_reference(tmp_path, qtype):
    make, reference = QUANT_CASES[qtype]
    raw = make(np.random.default_rng(0))
    tensor = _read_back(tmp_path, raw, qtype)
    expected = torch.tensor(reference(raw), dtype=torch.float32).reshape(ROWS, COLS)
    torch.testing.assert_close(dequantize(tensor), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["F32", "F16"])
def test_float_tensors_keep_values_and_shape(tmp_path, dtype):
    values = np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(dtype)
    out = dequantize(_read_back(tmp_path, values, None))
    assert out.dtype == torch.float32 and out.shape == (ROWS, COLS)
    torch.testing.assert_close(out, torch.from_numpy(values.astype(np.float32)), rtol=0, atol=0)


def test_bf16_tensors_are_the_top_half_of_float32(tmp_path):
    values = torch.randn(ROWS, COLS).to(torch.bfloat16)
    raw = values.view(torch.int16).numpy().view(np.uint8)  # BF16 is stored as raw bytes: 2 per element
    out = dequantize(_read_back(tmp_path, raw, Q.BF16))
    torch.testing.assert_close(out, values.float(), rtol=0, atol=0)


@pytest.mark.parametrize(("gguf_name", "hf"), [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.7.attn_q.weight", "model.layers.7.self_attn.q_proj.weight"),
    ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight"),
    ("blk.2.ffn_gate.weight", "model.layers.2.mlp.gate_proj.weight"),
    ("blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight"),
    ("blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight"),
    ("blk.1.ffn_norm.weight", "model.layers.1.post_attention_layernorm.weight"),
])
def test_gguf_names_map_to_hf(gguf_name, hf):
    assert hf_name(gguf_name) == hf


def test_unknown_gguf_tensor_is_an_error():
    with pytest.raises(ValueError, match="unknown GGUF tensor"):
        hf_name("blk.0.ssm_conv.weight")


# ---- a tiny GGUF written the way convert_hf_to_gguf.py writes one --------------------------------
def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute` (rope pairs interleaved for llama.cpp)."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


GGUF_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm"}


def write_tiny_gguf(path, hf_checkpoint) -> None:
    """F32 GGUF with llama.* metadata, a byte-level tokenizer and q/k permuted like llama.cpp."""
    config = TINY_LLAMA
    writer = GGUFWriter(path, "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([*(bytes_to_unicode()[b] for b in range(256)), "<s>", "</s>"])
    writer.add_token_types([1] * 256 + [3, 3])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_add_bos_token(True)
    for name, tensor in hf_checkpoint.state_dict.items():
        writer.add_tensor(_gguf_name(name), _llama_cpp_layout(name, tensor.numpy()))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        step()
    writer.close()


def _gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, layer, rest = hf.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{layer}.{GGUF_PARTS[module]}.{kind}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def _llama_cpp_layout(name: str, weight: np.ndarray) -> np.ndarray:
    if "q_proj" in name:
        return llama_cpp_permute(weight, TINY_LLAMA["num_attention_heads"])
    if "k_proj" in name:
        return llama_cpp_permute(weight, TINY_LLAMA["num_key_value_heads"])
    return weight


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_hf_dir):
    return load_checkpoint(tiny_hf_dir)


def test_tiny_gguf_round_trip_undoes_the_rope_permutation(tmp_path, tiny_checkpoint):
    write_tiny_gguf(tmp_path / "tiny.gguf", tiny_checkpoint)
    loaded = load_checkpoint(tmp_path / "tiny.gguf")
    assert loaded.config.num_key_value_heads == 2 and loaded.config.tie_word_embeddings is False
    assert loaded.state_dict.keys() == tiny_checkpoint.state_dict.keys()
    for name, tensor in tiny_checkpoint.state_dict.items():
        torch.testing.assert_close(loaded.state_dict[name], tensor, rtol=0, atol=0, msg=name)
    assert loaded.tokenizer.encode("hi") == [256, ord("h"), ord("i")] == tiny_checkpoint.tokenizer.encode("hi")


def test_permutation_matters(tiny_checkpoint):
    """Guard for the round trip above: llama.cpp's permutation really changes the q weights."""
    q = tiny_checkpoint.state_dict["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.array_equal(llama_cpp_permute(q, TINY_LLAMA["num_attention_heads"]), q)


# ---- HF directories -------------------------------------------------------------------------------
def test_hf_dir_loads_config_weights_and_tokenizer(tiny_hf_dir, tiny_checkpoint):
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(tiny_hf_dir).state_dict()
    assert tiny_checkpoint.config.hidden_size == 64 and tiny_checkpoint.config.bos_token_id == 256
    for name, tensor in tiny_checkpoint.state_dict.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    assert tiny_checkpoint.tokenizer.decode(tiny_checkpoint.tokenizer.encode("héllo")) == "héllo"


def test_sharded_hf_dir_equals_single_file(tmp_path, tiny_checkpoint):
    sharded = save_tiny_hf(tmp_path, max_shard_size="100KB")
    assert json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    state_dict = load_checkpoint(sharded).state_dict
    assert state_dict.keys() == tiny_checkpoint.state_dict.keys()
    assert all(torch.equal(state_dict[k], v) for k, v in tiny_checkpoint.state_dict.items())


def test_load_checkpoint_rejects_other_paths(tmp_path):
    with pytest.raises(ValueError, match="not a .gguf file or a directory with config.json"):
        load_checkpoint(tmp_path)


# ---- the real model ----------------------------------------------------------------------------
@pytest.mark.model
def test_smollm2_config_comes_from_metadata(smollm2_checkpoint):
    config = smollm2_checkpoint.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (576, 1536, 30)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.rope_theta, config.tie_word_embeddings) == (49152, 100000.0, True)
    assert "lm_head.weight" not in smollm2_checkpoint.state_dict


TEXTS = ["Hello world", "  two  spaces\tand a tab\n\nnew paragraph", "naïve café, 日本語のテキスト 🤖🎉👩‍👩‍👧",
         "x = 12345 + 67.89; don't I'll", "<|im_start|>user\nHi there<|im_end|>\n", "Ünïcödé ∑∫ √2 ≠ ∞"]


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_tokenizer_matches_transformers(smollm2_checkpoint, hf_smollm2_tokenizer, text):
    ids = smollm2_checkpoint.tokenizer.encode(text)
    assert ids == hf_smollm2_tokenizer.encode(text)
    assert smollm2_checkpoint.tokenizer.decode(ids, skip_special_tokens=False) == text


@pytest.mark.model
def test_smollm2_logits_match_transformers(smollm2_checkpoint, smollm2_model, hf_smollm2):
    ids = smollm2_checkpoint.tokenizer.encode("The capital of France is Paris. The capital of Germany is")
    with torch.inference_mode():
        expected = hf_smollm2(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits_of(smollm2_model, ids), expected, rtol=1e-4, atol=1e-4)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "<|im_start|>user\nName three colors.<|im_end|>\n"
           "<|im_start|>assistant\n"]


@pytest.mark.model
@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_greedy_matches_transformers(smollm2_checkpoint, smollm2_model, hf_smollm2, prompt):
    ids = smollm2_checkpoint.tokenizer.encode(prompt)
    prompt_ids = torch.tensor([ids])
    with torch.inference_mode():  # explicit mask: the prompt holds <|im_end|>, which HF would take for padding
        expected = hf_smollm2.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=16,
                                       do_sample=False, eos_token_id=None, pad_token_id=2)[0, len(ids):].tolist()
    assert greedy_of(smollm2_model, ids, 16) == expected
