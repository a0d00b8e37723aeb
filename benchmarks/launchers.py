"""How to launch each server under test: context managers that start it, wait until it answers, yield its
base URL (no `/v1`), and stop it on exit (SIGTERM to its process group, SIGKILL after a grace period).

Peer binaries live under `OPSLAB_PEERS_DIR` (default /var/cache/opslab/peers), built by scripts/build-peers.sh
for the CPU features of the machine that built them; a peer built for features this CPU lacks is refused
(it would die on an illegal instruction), with the command that rebuilds it.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import httpx

from benchmarks.machine import cpu, peer_builds, peers_dir
from benchmarks.names import HF, LLAMA_CPP_PYTHON, LLAMA_SERVER

HOST = "127.0.0.1"
BUILD_HINT = "build it with `scripts/build-peers.sh {peer}` (10-12 min on 2 cores)"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
FEATURE_FLAGS = {  # a ggml build feature (build.json) -> the /proc/cpuinfo flags it compiles for
    "sse42": ("sse4_2",), "avx": ("avx",), "avx2": ("avx2",), "fma": ("fma",), "f16c": ("f16c",), "bmi2": ("bmi2",),
    "avx_vnni": ("avx_vnni",), "avx512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "avx512_vbmi": ("avx512vbmi",), "avx512_vnni": ("avx512_vnni",), "avx512_bf16": ("avx512_bf16",),
}


class PeerError(RuntimeError):
    """A server under test is missing, died, or never became ready."""


def llama_server_binary() -> Path:
    """The native llama.cpp server, or PeerError naming the build script."""
    binary = peers_dir() / "bin" / "llama-server"
    if not os.access(binary, os.X_OK):
        raise PeerError(f"llama-server is not built ({binary} missing); {BUILD_HINT.format(peer=LLAMA_SERVER)}")
    check_built_for_this_cpu(LLAMA_SERVER)
    return binary


def check_built_for_this_cpu(peer: str) -> None:
    """PeerError when the peer has no build record or was built for CPU features this machine lacks."""
    build = peer_builds().get(peer)
    if build is None:
        raise PeerError(f"{peer} has no build record (built before records were kept); "
                        f"{BUILD_HINT.format(peer=peer)}")
    flags = set(cpu()["flags"])
    lacking = [feature for feature in build["features"] if not set(FEATURE_FLAGS.get(feature, ())) <= flags]
    if lacking:
        raise PeerError(f"{peer} was built on {build['cpu_model']} for {', '.join(lacking)}, which this CPU lacks; "
                        f"{BUILD_HINT.format(peer=peer)}")


def llama_cpp_python() -> Path:
    """The interpreter of the llama-cpp-python venv (with its server installed), or PeerError."""
    python = peers_dir() / "llama-cpp-python" / "bin" / "python"
    installed = python.is_file() and subprocess.run([python, "-c", "import llama_cpp.server"],
                                                    capture_output=True, timeout=60).returncode == 0
    if not installed:
        raise PeerError(f"llama-cpp-python's server is not installed ({python} cannot import llama_cpp.server); "
                        f"{BUILD_HINT.format(peer=LLAMA_CPP_PYTHON)}")
    check_built_for_this_cpu(LLAMA_CPP_PYTHON)
    return python


def missing_peers(names) -> dict[str, str]:
    """{peer: why it cannot run} for the llama.cpp peers among `names` that are not built (others ignored)."""
    checks = {LLAMA_SERVER: llama_server_binary, LLAMA_CPP_PYTHON: llama_cpp_python}
    missing = {}
    for name in names:
        try:
            checks.get(name, lambda: None)()
        except PeerError as error:
            missing[name] = str(error)
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the server's process group (it was started as a session leader)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # nothing left in the group
        pass


def stop_process(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after `grace_s`; reaps the server."""
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process, signal.SIGKILL)
    process.wait(timeout=10)


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    """Poll `url` until it answers 200; PeerError when the process exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"{process.args[0]} exited with {process.returncode} while starting:\n{log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise PeerError(f"no 200 from {url} within {timeout_s:.0f}s:\n{log_tail(log_path)}")


@contextmanager
def launched(name: str, command: Sequence, port: int, ready_path: str = "/health", log_dir: Path | None = None,
             ready_timeout_s: float = 300.0, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `command` in its own process group (environment `env`, default ours); yield its base URL once
    `ready_path` answers 200; stop it on exit."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="opslab-peers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    base_url = f"http://{HOST}:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(part) for part in command], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    try:
        wait_ready(process, base_url + ready_path, log_path, ready_timeout_s)
        yield base_url
    finally:
        stop_process(process)


def torch_env(threads: int) -> dict[str, str]:
    """Environment of a torch-based server: its thread count, no API key inherited from ours, and this
    checkout on the import path (the benchmarks package is not installed)."""
    env = {key: value for key, value in os.environ.items() if key != "OPSLAB_API_KEY"}
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return {**env, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}


@contextmanager
def ours_server(engine_dir: Path, port: int, threads: int = 2, max_num_seqs: int | None = None,
                  max_queue: int = 256, extra_args: Sequence[str] = (), **launch) -> Iterator[str]:
    """Our server (`python -m inference.server`) over an engine dir."""
    command = [sys.executable, "-m", "inference.server", "--engine", engine_dir, "--host", HOST, "--port", port,
               "--max-queue", max_queue, "--engine-arg", f"num_threads={threads}", *extra_args]
    if max_num_seqs:
        command += ["--engine-arg", f"max_num_seqs={max_num_seqs}"]
    with launched("ours", command, port, env=torch_env(threads), **launch) as url:
        yield url


@contextmanager
def hf_baseline_server(model: Path, port: int, threads: int = 2, **launch) -> Iterator[str]:
    """The transformers baseline (benchmarks.hf_server) over an HF dir or a .gguf file."""
    command = [sys.executable, "-m", "benchmarks.hf_server", "--model", model, "--host", HOST, "--port", port,
               "--threads", threads]
    with launched(HF, command, port, env=torch_env(threads), **launch) as url:
        yield url


@cache
def llama_server_flags(binary: Path) -> frozenset[str]:
    """The long options this llama-server build knows (from --help)."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    return frozenset(word.strip(",") for word in help_text.split() if word.startswith("--"))


@contextmanager
def llama_server(gguf: Path, port: int, threads: int = 2, parallel: int = 1, ctx_per_slot: int = 1024,
                 **launch) -> Iterator[str]:
    """llama.cpp's native server: `parallel` slots, continuous batching, ctx_per_slot tokens per slot."""
    binary = llama_server_binary()
    command = [binary, "-m", gguf, "--host", HOST, "--port", port, "-t", threads, "--parallel", parallel, "-cb",
               "-c", parallel * ctx_per_slot]
    if "--no-webui" in llama_server_flags(binary):
        command.append("--no-webui")
    with launched(LLAMA_SERVER, command, port, **launch) as url:
        yield url


@contextmanager
def llama_cpp_python_server(gguf: Path, port: int, threads: int = 2, n_ctx: int = 2048, **launch) -> Iterator[str]:
    """llama-cpp-python's OpenAI server (serves one request at a time)."""
    command = [llama_cpp_python(), "-m", "llama_cpp.server", "--model", gguf, "--n_threads", threads,
               "--n_ctx", n_ctx, "--host", HOST, "--port", port]
    with launched(LLAMA_CPP_PYTHON, command, port, ready_path="/v1/models", **launch) as url:
        yield url
