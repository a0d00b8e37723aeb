"""Fixtures: the tiny random model (HF dir + engine dir, tests/server/live_server.py), the HF baseline server,
and the real peers. A peer that is not built skips its tests with the reason, except under CI=true, where it
fails them: CI builds llama-server (`make peers`), so the code that compares us with it cannot rot. CI does
not build llama-cpp-python (another ~10 min on a fresh machine), so its tests skip there too, saying so."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "server"), str(TESTS / "inference")]

from live_server import build_tiny_engine  # noqa: E402  (needs the path above)

from benchmarks.launchers import PeerError, free_port, hf_baseline_server, llama_cpp_python, llama_server_binary  # noqa: E402,E501
from inference.model_store import SMOLLM2, FetchError, fetch_model  # noqa: E402


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


def missing(what: str, in_ci: bool = True) -> None:
    """Fail under CI=true when CI is meant to have `what`; skip with the reason otherwise."""
    if in_ci and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {what}")
    pytest.skip(what)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    try:
        return fetch_model(SMOLLM2)
    except (FetchError, OSError) as error:
        missing(f"the SmolLM2 model could not be fetched ({error}); run `python -m inference fetch-model`")


@pytest.fixture(scope="session")
def llama_server_peer() -> Path:
    """The llama-server binary scripts/build-peers.sh built for this CPU (CI builds it: `make peers`)."""
    try:
        return llama_server_binary()
    except PeerError as error:
        missing(str(error))


@pytest.fixture(scope="session")
def llama_cpp_python_peer() -> Path:
    """llama-cpp-python's interpreter; not built in CI (see the module docstring), so never required."""
    try:
        return llama_cpp_python()
    except PeerError as error:
        missing(f"{error} (CI does not build llama-cpp-python)", in_ci=False)
