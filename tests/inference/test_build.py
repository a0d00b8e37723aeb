"""Engine build -> load_engine round trip, the engine config.json, and the `python -m inference` CLI."""

from __future__ import annotations

import json

import pytest
import torch
from weights_helpers import logits_of, quantized_model

from inference.__main__ import main
from inference.build import build_engine, load_engine
from inference.loaders import load_checkpoint
from inference.quant import Int4Linear, Int8Linear, QuantConfig

IDS = [256, *range(60, 100)]


@pytest.fixture(scope="module")
def reference_logits(tiny_hf_dir):
    from transformers import LlamaForCausalLM

    with torch.inference_mode():
        return LlamaForCausalLM.from_pretrained(tiny_hf_dir).eval()(torch.tensor([IDS])).logits[0]


def test_float32_engine_round_trip_gives_the_same_logits(tmp_path, tiny_hf_dir, reference_logits):
    build_engine(tiny_hf_dir, tmp_path)
    spec, model, tokenizer = load_engine(tmp_path)
    torch.testing.assert_close(logits_of(model, IDS), reference_logits, rtol=1e-5, atol=1e-5)
    assert tokenizer.encode("hi") == [256, ord("h"), ord("i")]
    assert spec.model == load_checkpoint(tiny_hf_dir).config


def test_engine_config_records_model_quant_runtime_and_source(tmp_path, tiny_hf_dir):
    build_engine(tiny_hf_dir, tmp_path, dtype="bfloat16", quant="int4", group_size=32,
                 runtime_overrides={"max_num_seqs": 4, "kv_block_size": 8, "kv_cache_bytes": 1 << 20})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["quant"] == {"mode": "int4", "group_size": 32, "quantize_head": True}
    assert config["lora"] is None and config["model"]["hidden_size"] == 64
    assert config["runtime"] == {"max_num_seqs": 4, "max_num_batched_tokens": 512, "kv_block_size": 8,
                                 "kv_cache_memory_fraction": 0.1, "kv_cache_bytes": 1 << 20, "kv_cache_dtype": "auto",
                                 "max_model_len": 256}
    assert len(config["build"]["sha256"]) == 64 and config["build"]["source"].endswith(tiny_hf_dir.name)
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize(("quant", "module_type"), [("int8", Int8Linear), ("int4", Int4Linear), ("w8a8", Int8Linear)])
def test_quantized_engine_round_trip_keeps_quantized_modules(tmp_path, tiny_hf_dir, quant, module_type):
    """The loaded engine equals the in-memory quantized model exactly (quant accuracy: test_quant.py)."""
    build_engine(tiny_hf_dir, tmp_path, quant=quant, group_size=32)
    _, model, _ = load_engine(tmp_path)
    layer = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(layer, module_type) and getattr(layer, "int8_activations", False) == (quant == "w8a8")
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.group_size == 32  # the head: int8 (Q8_0 code)
    assert not model.lm_head.int8_activations
    expected = logits_of(quantized_model(load_checkpoint(tiny_hf_dir), QuantConfig(quant, 32)), IDS)
    torch.testing.assert_close(logits_of(model, IDS), expected, rtol=0, atol=0)


def test_full_precision_head_leaves_the_head_unquantized(tmp_path, tiny_hf_dir):
    build_engine(tiny_hf_dir, tmp_path, quant="int8", quantize_head=False)
    _, model, _ = load_engine(tmp_path)
    assert type(model.lm_head) is torch.nn.Linear and isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
    expected = logits_of(quantized_model(load_checkpoint(tiny_hf_dir), QuantConfig("int8", quantize_head=False)), IDS)
    torch.testing.assert_close(logits_of(model, IDS), expected, rtol=0, atol=0)


def test_int8_engine_stays_close_to_float32(tmp_path, tiny_hf_dir, reference_logits):
    build_engine(tiny_hf_dir, tmp_path, quant="int8")
    _, model, _ = load_engine(tmp_path)
    assert (logits_of(model, IDS) - reference_logits).abs().max() < 0.1 * reference_logits.abs().max()


def test_bfloat16_engine_stores_bfloat16_weights(tmp_path, tiny_hf_dir, reference_logits):
    build_engine(tiny_hf_dir, tmp_path, dtype="bfloat16")
    _, model, _ = load_engine(tmp_path)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert (logits_of(model, IDS) - reference_logits).abs().max() < 0.1 * reference_logits.abs().max()


@pytest.mark.model
def test_smollm2_gguf_int8_engine_builds_and_loads(tmp_path, smollm2_gguf, smollm2_checkpoint):
    build_engine(smollm2_gguf, tmp_path, quant="int8")
    spec, model, tokenizer = load_engine(tmp_path)
    assert spec.build["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    # 106M int8 layer weights + the 113 MB float32 embedding + its 28M int8 copy as the head (+ 3.5 MB of
    # group scales), vs 538 MB for all-float32
    assert (tmp_path / "model.safetensors").stat().st_size < 260e6
    assert tokenizer.encode("Hello 🤖") == smollm2_checkpoint.tokenizer.encode("Hello 🤖")


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_build_writes_an_engine(tmp_path, tiny_hf_dir, capsys):
    out = tmp_path / "engine"
    assert main(["build", str(tiny_hf_dir), "-o", str(out), "--quant", "int8", "--max-num-seqs", "3",
                 "--kv-cache-memory-fraction", "0.2", "--max-model-len", "128"]) == 0
    runtime = json.loads((out / "config.json").read_text())["runtime"]
    assert (runtime["max_num_seqs"], runtime["kv_cache_memory_fraction"], runtime["max_model_len"]) == (3, 0.2, 128)
    assert "built" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["build", "/no/such/model", "-o", "OUT"], "model path /no/such/model does not exist"),
    (["build", "MODEL", "-o", "OUT", "--dtype", "float64"], "Invalid value for '--dtype'"),
    (["build", "MODEL", "-o", "OUT", "--quant", "int2"], "Invalid value for '--quant'"),
    (["build", "MODEL", "-o", "OUT", "--group-size", "48"], "Invalid value for '--group-size'"),
    (["build", "MODEL", "-o", "OUT", "--lora", "/no/adapter"], "LoRA adapter directory /no/adapter does not exist"),
    (["build", "MODEL", "-o", "OUT", "--lora", "EMPTY"], "no adapter_config.json"),
    (["build", "MODEL", "-o", "OUT", "--kv-cache-bytes", "1", "--kv-cache-memory-fraction", "0.5"],
     "exclude each other"),
    (["build", "MODEL", "-o", "OUT", "--max-num-seqs", "0"], "max_num_seqs must be > 0"),
    (["build", "MODEL"], "Missing option '-o' / '--output'"),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path, tiny_hf_dir, capsys, args, message):
    (tmp_path / "EMPTY").mkdir()
    substitutions = {"MODEL": str(tiny_hf_dir), "OUT": str(tmp_path / "out"), "EMPTY": str(tmp_path / "EMPTY")}
    assert main([substitutions.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "config.json").exists()
