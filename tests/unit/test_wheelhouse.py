"""lab_tasks.wheelhouse without the network: the requirement pins, the cache keys, the HTTP server's lifecycle
(PID file, idempotent start, stop) and one-line errors. The real build runs in the sandbox tests (the
inference_service role builds and serves the wheelhouse)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lab_tasks import wheelhouse
from lab_tasks.registry import PROJECT_ROOT


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OPSLAB_CACHE", str(tmp_path))
    yield tmp_path
    wheelhouse.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_requirements_follow_pyproject_and_pin_the_torch_build():
    pins = wheelhouse.runtime_requirements("cpu")
    assert "torch==2.13.0+cpu" in pins
    assert any(pin.startswith("fastapi") for pin in pins)
    assert not any(pin.startswith(("ansible", "fabric", "matplotlib")) for pin in pins)  # lab tooling stays off nodes
    assert "torch==2.13.0+cu128" in wheelhouse.runtime_requirements("cu128")


def test_a_package_missing_from_pyproject_is_a_one_line_error():
    with pytest.raises(wheelhouse.WheelhouseError, match="left-pad not in pyproject.toml"):
        wheelhouse.runtime_requirements("cpu", ("torch", "left-pad"))


def test_source_digest_changes_with_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(wheelhouse, "PROJECT_ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("one")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    first = wheelhouse.digest_of([tmp_path / "pkg"])
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"cache")
    assert wheelhouse.digest_of([tmp_path / "pkg"]) == first  # caches do not count
    (tmp_path / "pkg" / "a.py").write_text("two")
    assert wheelhouse.digest_of([tmp_path / "pkg"]) != first


def test_serve_is_idempotent_and_stop_ends_the_server(cache):
    port = free_port()
    (cache / "wheelhouse" / "cpu").mkdir(parents=True)
    (cache / "wheelhouse" / "cpu" / "manifest.json").write_text('{"variant": "cpu"}')
    started = wheelhouse.serve("127.0.0.1", port)
    assert started["changed"] and wheelhouse.running_pid() == started["pid"]
    assert wheelhouse.pid_file().read_text().strip() == str(started["pid"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/cpu/manifest.json", timeout=5) as response:
        assert json.load(response) == {"variant": "cpu"}
    assert wheelhouse.serve("127.0.0.1", port) == {"changed": False, "pid": started["pid"],
                                                   "url": f"http://127.0.0.1:{port}/"}
    assert wheelhouse.stop() == {"changed": True, "pid": started["pid"]}
    assert not wheelhouse.answers("127.0.0.1", port) and not wheelhouse.pid_file().exists()
    assert wheelhouse.stop()["changed"] is False


def test_serve_on_an_address_this_host_lacks_exits_2_with_one_line(cache):
    done = subprocess.run([sys.executable, "-m", "lab_tasks.wheelhouse", "serve", "--bind", "192.0.2.1",
                           "--port", str(free_port())], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: the wheelhouse server did not answer on 192.0.2.1:")
    assert len(done.stderr.strip().splitlines()) == 1 and not wheelhouse.pid_file().exists()


@pytest.mark.parametrize("argv, says", [([], "Missing command"),
                                        (["serve", "--bind", "127.0.0.1"], "Missing option '--port'"),
                                        (["serve", "--bind", "127.0.0.1", "--port", "70000"], "--port")])
def test_bad_command_lines_get_one_error_line_and_exit_2(argv, says):
    done = subprocess.run([sys.executable, "-m", "lab_tasks.wheelhouse", *argv], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], done.stderr
