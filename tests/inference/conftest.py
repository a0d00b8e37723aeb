"""Fixtures for the engine tests: a tiny random HF Llama directory and the real SmolLM2 GGUF (session-wide).

Real-model fixtures load the 135M model once per session. Tests that use them are marked `model`.
Without the model: skip with the reason, except when CI=true, where a missing model fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from weights_helpers import save_tiny_hf

from inference import kernels
from inference.model_store import SMOLLM2, FetchError, fetch_model


@pytest.fixture(scope="session")
def require_kernels():
    """The fused CPU kernels, built; without them skip, except under CI=true, where that fails."""
    try:
        kernels.library()
    except kernels.KernelUnavailable as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the fused CPU kernels: {error}")
        pytest.skip(f"fused CPU kernels unavailable: {error}")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    return save_tiny_hf(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_hf_dir) -> Path:
    """Alias named in ENGINE.md."""
    return tiny_hf_dir


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetched once into the opslab cache."""
    try:
        return fetch_model(SMOLLM2)
    except (FetchError, OSError) as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the SmolLM2 model could not be fetched: {error}")
        pytest.skip(f"SmolLM2 model not available ({error}); run `python -m inference fetch-model`")


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2_gguf):
    from inference.loaders import load_checkpoint

    return load_checkpoint(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_checkpoint):
    """Our LlamaForCausalLM with SmolLM2's dequantized float32 weights."""
    from inference.model import LlamaForCausalLM, convert_hf_state_dict

    config = smollm2_checkpoint.config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(convert_hf_state_dict(smollm2_checkpoint.state_dict, config), assign=True)
    return model.eval()


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own GGUF loading of the same file (it dequantizes too): the reference model."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
