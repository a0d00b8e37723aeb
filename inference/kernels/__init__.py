"""Fused CPU matmul kernels for the linear layers (linear_avx2.c), compiled with the system C compiler on
first use and loaded with ctypes.

PyTorch's own weight-only kernels are not vectorised for AVX2 CPUs (see inference/README.md), and
dequantize-then-F.linear reads the weights twice. `linear()` decodes float32 / int8 / int4 weights inside
one AVX2 matmul, parallel over output rows with the same OpenMP runtime torch uses (libgomp is loaded by
torch first, so both share one thread pool).

The shared library is cached by a hash of the source, the flags and the compiler in $OPSLAB_KERNEL_CACHE
(default ~/.cache/opslab/kernels). OPSLAB_CPU_KERNELS=0 turns the kernels off (the benchmarks use that to
measure the plain PyTorch path side by side).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("linear_avx2.c")
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-Wall")
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")
FORMATS = {"float32": 0, "int8": 1, "int4": 2}
ROWS = 4  # output rows per block in the kernel: out_features must be a multiple
log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """The fused kernels cannot run here (the message says why)."""


def cache_dir() -> Path:
    return Path(os.environ.get("OPSLAB_KERNEL_CACHE", "~/.cache/opslab/kernels")).expanduser()


def enabled() -> bool:
    """True when the kernels are switched on and build/load on this machine (built on the first call)."""
    try:
        library()
    except KernelUnavailable:
        return False
    return True


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernel library; raises KernelUnavailable with the reason when it cannot be had."""
    if os.environ.get("OPSLAB_CPU_KERNELS", "1") == "0":
        raise KernelUnavailable("switched off by OPSLAB_CPU_KERNELS=0")
    if platform.machine() not in ("x86_64", "AMD64"):
        raise KernelUnavailable(f"needs an x86-64 CPU, this is {platform.machine()}")
    missing = [flag for flag in REQUIRED_CPU_FLAGS if flag not in _cpu_flags()]
    if missing:
        raise KernelUnavailable(f"the CPU lacks {', '.join(missing)}")
    lib = ctypes.CDLL(str(_compiled()))
    lib.opslab_linear.restype = ctypes.c_int
    lib.opslab_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compiled() -> Path:
    """Compile linear_avx2.c unless a library for this source, these flags and this compiler is cached."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C compiler ({compiler!r} is not on PATH; `make install` installs gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + version.encode()).hexdigest()[:16]
    target = cache_dir() / f"linear_avx2-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *CFLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelUnavailable(f"compiling {SOURCE.name} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: concurrent first uses each build, one wins
    log.info("compiled %s", target)
    return target


def supports(x: torch.Tensor, in_features: int, out_features: int, fmt: str) -> bool:
    """Whether `linear` can take this input and layer shape (otherwise use the PyTorch path)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and out_features % ROWS == 0
            and in_features % (32 if fmt == "int4" else 8) == 0 and enabled())


def linear(x: torch.Tensor, fmt: str, weight: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
           scales: torch.Tensor | None = None, mins: torch.Tensor | None = None, group_size: int = 0) -> torch.Tensor:
    """x [..., K] float32 @ decoded(weight)^T (+ bias) -> [..., out_features].

    fmt "float32": weight [N, K]; "int8": weight int8 [N, K], scales float32 [N] (per row) or [N, groups];
    "int4": weight uint8 [N, K_padded / 2] (block-32 nibble layout, see quant.pack_int4),
    scales and mins float32 [N, groups]. Every tensor must be contiguous.
    """
    in_features = x.shape[-1]
    rows = x.reshape(-1, in_features).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0] > 0:
        status = library().opslab_linear(
            rows.data_ptr(), rows.shape[0], in_features, out_features, FORMATS[fmt], weight.data_ptr(),
            weight.stride(0) * weight.element_size(), _pointer(scales), _pointer(mins),
            0 if scales is None or scales.dim() < 2 else scales.shape[1], group_size, _pointer(bias),
            out.data_ptr())
        if status != 0:
            raise MemoryError("fused linear kernel: scratch allocation failed")
    return out.reshape(*x.shape[:-1], out_features)


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
