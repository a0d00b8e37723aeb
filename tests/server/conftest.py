"""Fixtures: one tiny engine per session, the real server on 127.0.0.1 (default and strict settings)."""
from __future__ import annotations

import pytest

from live_server import API_KEY, build_tiny_engine, start_server


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory):
    return build_tiny_engine(tmp_path_factory.getbasetemp() / "tiny-engine")


@pytest.fixture(scope="session")
def server(engine_dir, tmp_path_factory):
    live = start_server(engine_dir, tmp_path_factory.mktemp("server-logs"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def strict_server(engine_dir, tmp_path_factory):
    """API key required and room for one engine request only."""
    live = start_server(engine_dir, tmp_path_factory.mktemp("strict-logs"), "--api-key", API_KEY, "--max-queue", "1")
    yield live
    live.stop()


@pytest.fixture(scope="session")
def tokenizer(engine_dir):
    from inference.tokenizer import Tokenizer

    return Tokenizer.load(engine_dir)
