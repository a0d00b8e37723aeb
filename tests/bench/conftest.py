"""Fixtures: the real server (tests/server/live_server.py) on 127.0.0.1 for the bench to load."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from live_server import build_tiny_engine, start_server  # noqa: E402  (needs the path above)


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory):
    engine_dir = build_tiny_engine(tmp_path_factory.getbasetemp() / "tiny-engine")
    live = start_server(engine_dir, tmp_path_factory.mktemp("bench-server-logs"))
    yield live
    live.stop()
