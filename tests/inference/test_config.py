"""ModelConfig / EngineConfig: derived fields, HF config.json parsing, validation."""
from __future__ import annotations

import pytest
from transformers import LlamaConfig

from inference.config import EngineConfig, ModelConfig

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def test_derived_fields():
    config = ModelConfig(**TINY)
    assert (config.num_key_value_heads, config.head_dim) == (4, 16)
    assert ModelConfig(**TINY, eos_token_id=[2, 7]).eos_token_ids == {2, 7}


def test_from_dict_reads_transformers_rope_parameters_and_ignores_unknown_keys():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = LlamaConfig(**TINY, num_key_value_heads=2, rope_parameters={"rope_theta": 5e5, **scaling}).to_dict()
    config = ModelConfig.from_dict({**hf, "some_unknown_key": 1})
    assert config.rope_theta == 5e5 and config.rope_scaling["rope_type"] == "llama3"
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [dict(num_key_value_heads=3), dict(hidden_size=0), dict(rope_theta=-1.0),
                                 dict(rope_scaling={"rope_type": "yarn", "factor": 2.0})])
def test_bad_model_config_raises(bad):
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY, **bad})


def test_missing_required_field_is_a_value_error():
    with pytest.raises(ValueError, match="bad model config"):
        ModelConfig.from_dict({"vocab_size": 10})


def test_engine_config_overrides_and_validation():
    config = EngineConfig.from_dict({"max_num_seqs": 4, "kv_block_size": 8, "unknown": True})
    assert config.replace(max_num_seqs=2, device=None).max_num_seqs == 2
    assert config.resolve_max_model_len(ModelConfig(**TINY, max_position_embeddings=100)) == 100
    with pytest.raises(ValueError, match="unknown engine options"):
        config.replace(bogus=1)
    for bad in (dict(max_num_seqs=0), dict(kv_cache_memory_fraction=1.5), dict(dtype="int8"),
                dict(max_num_seqs=32, max_num_batched_tokens=16)):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


@pytest.mark.parametrize(("options", "stored_in"), [
    ({}, "float16"),  # a float32 model on the CPU: float16 keys and values, as llama.cpp's default cache
    ({"kv_cache_dtype": "float32"}, "float32"),
    ({"dtype": "bfloat16"}, "bfloat16"),  # "auto" follows a narrower model dtype
    ({"device": "cuda:0"}, "float32"),
    ({"device": "cuda", "kv_cache_dtype": "float16"}, "float16"),
])
def test_kv_cache_dtype_auto_and_explicit(options, stored_in):
    assert EngineConfig(**options).resolved_kv_cache_dtype() == stored_in


def test_a_bad_kv_cache_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \('auto', 'float32', 'bfloat16', 'float16'\)"):
        EngineConfig(kv_cache_dtype="int8")
