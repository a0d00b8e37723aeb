"""benchmarks.launchers: launch, readiness and teardown without orphans; clear errors for missing or broken peers."""
from __future__ import annotations

import httpx
import psutil
import pytest

from benchmarks.launchers import (PeerError, free_port, hf_baseline_server, llama_cpp_python_server, llama_server,
                                  ours_server)

pytestmark = pytest.mark.timeout(120)


def listeners(port: int) -> list[psutil.Process]:
    """Processes whose command line names `port` (our launchers always pass it)."""
    return [process for process in psutil.process_iter(["cmdline"])
            if str(port) in (process.info["cmdline"] or [])]


@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_server_is_ready_inside_and_gone_after(kind, tiny_engine_dir, tiny_hf_dir, tmp_path):
    port = free_port()
    launch = (ours_server(tiny_engine_dir, port, threads=1, max_num_seqs=2, log_dir=tmp_path) if kind == "ours"
              else hf_baseline_server(tiny_hf_dir, port, threads=1, log_dir=tmp_path))
    with launch as url:
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.get(url + "/v1/models", timeout=10).json()["data"]
        assert listeners(port)
    assert listeners(port) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)


def test_missing_peers_name_the_build_script(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path))
    gguf = tmp_path / "model.gguf"
    for launch, peer in ((llama_server(gguf, free_port()), "llama-server"),
                         (llama_cpp_python_server(gguf, free_port()), "llama-cpp-python")):
        with pytest.raises(PeerError, match=f"scripts/build-peers.sh {peer}"):
            with launch:
                pass


def test_server_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    port = free_port()
    with pytest.raises(PeerError, match="exited with 1 while starting") as error:
        with ours_server(tmp_path / "no-such-engine", port, log_dir=tmp_path, ready_timeout_s=60):
            pass
    assert "not a .gguf file or a directory with config.json" in str(error.value)  # the log's tail
    assert listeners(port) == []


def test_a_peer_built_for_another_cpu_is_refused(tmp_path, monkeypatch):
    """The peers cache moves between machines: a build for features this CPU lacks would die on SIGILL."""
    import json

    from benchmarks import launchers

    monkeypatch.setenv("OPSLAB_PEERS_DIR", str(tmp_path))
    binary = tmp_path / "bin" / "llama-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    with pytest.raises(PeerError, match="no build record"):
        launchers.llama_server_binary()
    record = {"peer": "llama-server", "cpu_model": "Intel Xeon", "features": ["avx", "avx2", "avx512", "avx512_vnni"],
              "cmake_flags": "-DGGML_NATIVE=OFF"}
    (tmp_path / "bin" / "llama-server.build.json").write_text(json.dumps(record))
    monkeypatch.setattr(launchers, "cpu", lambda: {"model": "AMD EPYC", "flags": ["avx", "avx2", "fma"]})
    with pytest.raises(PeerError, match="built on Intel Xeon for avx512, avx512_vnni, which this CPU lacks"):
        launchers.llama_server_binary()
    monkeypatch.setattr(launchers, "cpu", lambda: {"model": "x", "flags": ["avx", "avx2", "avx512f", "avx512cd",
                                                                           "avx512vl", "avx512dq", "avx512bw",
                                                                           "avx512_vnni"]})
    assert launchers.llama_server_binary() == binary
