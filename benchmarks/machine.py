"""What a result was measured on: the CPU (model and flags), the peers' builds, and the read bandwidth.

Ratios only hold for the CPU they were measured on (the machines change between sessions), so every result
JSON carries `machine()`.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

PEER_BUILDS = {"llama-server": "bin/llama-server.build.json", "llama-cpp-python": "llama-cpp-python/build.json"}


def peers_dir() -> Path:
    """`${OPSLAB_PEERS_DIR:-/var/cache/opslab/peers}`, where scripts/build-peers.sh puts the peers."""
    return Path(os.environ.get("OPSLAB_PEERS_DIR", "/var/cache/opslab/peers"))


def cpu() -> dict:
    """Model name, logical CPUs and instruction-set flags from /proc/cpuinfo (the machine name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "flags": flags}


def peer_builds() -> dict[str, dict]:
    """The build record (CPU, features, cmake flags, version) of each peer that is built."""
    builds = {}
    for peer, relative in PEER_BUILDS.items():
        path = peers_dir() / relative
        if path.is_file():
            builds[peer] = json.loads(path.read_text())
    return builds


def machine() -> dict:
    return {"cpu": cpu(), "peer_builds": peer_builds(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())}


def read_bandwidth_gb_s(threads: int, device: str = "cpu") -> float:
    """Sustained read bandwidth: the faster of a float32 sum and an int8 max over a buffer far larger than
    the caches (median of 5 each; 512 MiB on a CPU, 4 GiB on a GPU). A probe that is compute-bound on some
    CPU reads low, so two kernels with different arithmetic are tried."""
    import torch

    torch.set_num_threads(threads)
    size = (4096 if device.startswith("cuda") else 512) * 2**20
    best = 0.0
    for dtype, reduce in ((torch.float32, torch.sum), (torch.int8, torch.amax)):
        buffer = torch.ones(size // dtype.itemsize, dtype=dtype, device=device)
        reduce(buffer)
        times = []
        for _ in range(5):
            start = _sync_time(device)
            reduce(buffer)
            times.append(_sync_time(device) - start)
        best = max(best, size / statistics.median(times) / 1e9)
        del buffer
    return best


def _sync_time(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def gguf_weight_type(path: str | Path) -> str | None:
    """The GGUF's file type as llama.cpp names it ("Q4_1"), or None when the file is not a GGUF."""
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).fields["general.file_type"]
        return gguf.LlamaFileType(int(field.parts[-1][0])).name.removeprefix("MOSTLY_")
    except (ImportError, OSError, KeyError, ValueError, IndexError):
        return None
