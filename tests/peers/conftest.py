"""Fixtures: the tiny random model (HF dir + engine dir, tests/server/live_server.py) and the HF baseline server."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from live_server import build_tiny_engine  # noqa: E402  (needs the path above)

from inference.peers.servers import free_port, hf_baseline_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory) -> Path:
    return build_tiny_engine(tmp_path_factory.getbasetemp() / "tiny-engine")


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_engine_dir) -> Path:
    """The random HF Llama checkpoint (save_pretrained) the tiny engine was built from."""
    return tiny_engine_dir.parent / "hf"


@pytest.fixture(scope="module")
def hf_url(tiny_hf_dir, tmp_path_factory):
    with hf_baseline_server(tiny_hf_dir, free_port(), threads=1, log_dir=tmp_path_factory.mktemp("hf-logs")) as url:
        yield url


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_hf_dir)
