"""A real `python -m inference.server` subprocess on 127.0.0.1 over a tiny random engine (server and bench tests)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
# tiny engine: 2 layers, byte-level vocabulary (258), 1024-token context, 16-token KV blocks
TINY_RUNTIME = dict(kv_block_size=16, max_num_seqs=16, max_num_batched_tokens=256, kv_cache_bytes=8 * 2**20,
                    max_model_len=1024)


def build_tiny_engine(base: Path) -> Path:
    """HF Llama (random, transformers save_pretrained) + byte-level tokenizer → inference.build.build_engine."""
    out = base / "engine"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from inference.build import build_engine
    from inference.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(base / "hf")
    Tokenizer.byte_level().save(base / "hf")
    build_engine(base / "hf", out, runtime_overrides=TINY_RUNTIME)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running server process and how to reach it."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.wait(10)


def start_server(engine_dir: Path, log_dir: Path, *args: str, timeout_s: float = 180,
                 entry: tuple[str, ...] = ("-m", "inference.server")) -> LiveServer:
    """Start the server (`entry`: how python runs it) and wait (bounded) until /health says ok."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    command = [sys.executable, *entry, "--engine", str(engine_dir), "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "tiny", *args]
    env = {k: v for k, v in os.environ.items() if k != "OPSLAB_API_KEY"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    wait_healthy(server, timeout_s)
    return server


def wait_healthy(server: LiveServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not healthy after {timeout_s}s:\n{server.log()}")


def metric_value(server_url: str, name: str, labels: str = "") -> float:
    """One sample from /metrics, e.g. metric_value(url, "vllm:request_success_total", 'finished_reason="length"')."""
    for line in httpx.get(server_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} {labels} not in /metrics")


def poll(condition, timeout_s: float = 30, interval_s: float = 0.1):
    """Wait (bounded) until condition() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval_s)
    return value
