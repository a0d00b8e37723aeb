"""Fused CPU kernels, compiled with the system C compiler on first use and loaded with ctypes:
- `linear()` (linear_avx2.c): decodes float32 / int8 / int4 weights inside one AVX2 matmul, or multiplies
  int8 weights with x quantized to int8 on the fly ("w8a8"). PyTorch's own weight-only kernels are not
  vectorised for AVX2 CPUs, and dequantize-then-F.linear reads the weights twice;
- `paged_decode_attention()` (attention_avx2.c): one query per sequence against its keys and values read in
  place through the block table, where the PyTorch path first gathers a dense copy of them per layer;
- `rotary()`, `silu_mul()` and `rms_norm()` (elementwise_avx2.c): one pass each where PyTorch takes 3-8 ops
  (per-op dispatch costs microseconds, and a decode step runs hundreds of ops);
- `decoder.FusedDecoder` (decoder_avx2.c): a whole decode step, embedding to logits, in one call and one
  OpenMP parallel region, built from the pieces above (linear.h, attention.h, elementwise.h).
All parallelise with the OpenMP runtime torch uses (libgomp is loaded by torch first, so they share one
thread pool).

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

SOURCES = tuple(Path(__file__).with_name(name) for name in ("linear_avx2.c", "attention_avx2.c",
                                                            "elementwise_avx2.c", "decoder_avx2.c"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("simd.h", "linear.h", "attention.h", "elementwise.h"))
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-Wall")
LIBS = ("-lm",)
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")
FORMATS = {"float32": 0, "int8": 1, "int4": 2, "w8a8": 3}
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
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.opslab_linear.restype = ctypes.c_int
    lib.opslab_linear.argtypes = [pointer, i64, i64, i64, ctypes.c_int, pointer, i64, pointer, pointer, i64, i64,
                                  pointer, pointer]
    lib.opslab_rotary.restype = lib.opslab_silu_mul.restype = lib.opslab_rms_norm.restype = None
    lib.opslab_rms_norm.argtypes = [pointer, i64, i64, pointer, ctypes.c_float, pointer]
    lib.opslab_rotary.argtypes = [pointer, i64, i64, i64, i64, pointer, pointer]
    lib.opslab_silu_mul.argtypes = [pointer, i64, i64, pointer]
    lib.opslab_decode_step.restype = ctypes.c_int
    lib.opslab_decode_step.argtypes = [pointer, i64, pointer, pointer, pointer, pointer, i64, pointer, i64, pointer]
    lib.opslab_paged_decode_attention.restype = ctypes.c_int
    lib.opslab_paged_decode_attention.argtypes = [pointer, i64, pointer, i64, i64, i64, i64, pointer, pointer, i64,
                                                  pointer, i64, pointer, i64, ctypes.c_float, pointer, i64]
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
    """Compile the sources unless a library for them, these flags and this compiler is cached."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C compiler ({compiler!r} is not on PATH; `make install` installs gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(" ".join(CFLAGS + LIBS).encode() + version.encode())
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    target = cache_dir() / f"opslab_kernels-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *CFLAGS, "-o", str(built), *map(str, SOURCES), *LIBS],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelUnavailable(f"compiling the kernels failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: concurrent first uses each build, one wins
    log.info("compiled %s", target)
    return target


def tiles(in_features: int, out_features: int, fmt: str, grouped: bool = False) -> bool:
    """Whether the kernel's blocks fit a layer: out_features in blocks of ROWS rows, in_features in whole
    vectors of 8, or whole blocks of 32 for int4, w8a8 and grouped int8."""
    return out_features % ROWS == 0 and in_features % (32 if fmt in ("int4", "w8a8") or grouped else 8) == 0


def supports(x: torch.Tensor, in_features: int, out_features: int, fmt: str) -> bool:
    """Whether `linear` can take this input and layer shape (otherwise use the PyTorch path)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and tiles(in_features, out_features, fmt)
            and enabled())


def linear(x: torch.Tensor, fmt: str, weight: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
           scales: torch.Tensor | None = None, mins: torch.Tensor | None = None, group_size: int = 0) -> torch.Tensor:
    """x [..., K] float32 @ decoded(weight)^T (+ bias) -> [..., out_features].

    fmt "float32": weight [N, K]; "int8": weight int8 [N, K], scales float32 [N] (per row) or [N, groups];
    "int4": weight uint8 [N, K_padded / 2] (block-32 nibble layout, see quant.pack_int4),
    scales and mins float32 [N, groups]; "w8a8": int8 weights with a scale per row, x quantized to int8 per
    block of 32 (quant.quantize_activations does the same in PyTorch). Every tensor must be contiguous.
    """
    grouped = fmt == "int4" or (scales is not None and scales.dim() == 2)
    if fmt == "w8a8" and grouped:
        raise ValueError("w8a8 takes int8 weights with one scale per row, not per group")
    if grouped and (group_size <= 0 or group_size % 32):
        raise ValueError(f"grouped weights need a group_size that is a positive multiple of 32, got {group_size}")
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


MAX_GROUP = 8  # query heads per kv head the attention kernel takes


def supports_attention(q: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether `paged_decode_attention` can take these queries and this cache."""
    heads, kv_heads, head_dim = q.shape[1], key_cache.shape[2], key_cache.shape[3]
    return (q.device.type == "cpu" and q.dtype == key_cache.dtype == torch.float32 and head_dim % 8 == 0
            and heads % kv_heads == 0 and heads // kv_heads <= MAX_GROUP and q.stride(2) == 1
            and q.stride(1) == head_dim and key_cache.is_contiguous() and enabled())


def paged_decode_attention(q: torch.Tensor, rows: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
                           block_tables: torch.Tensor, context_lens: torch.Tensor, max_context: int,
                           out: torch.Tensor) -> None:
    """out[rows[b]] = attention of q[rows[b]] ([heads, head_dim], one decode token of sequence b) over that
    sequence's first context_lens[b] cached keys/values; q, out: [T, heads, head_dim]; block_tables and
    context_lens int64 [B, max_blocks] and [B]."""
    key_cache, value_cache = kv_cache
    _, block_size, kv_heads, head_dim = key_cache.shape
    tables = block_tables.contiguous()
    status = library().opslab_paged_decode_attention(
        q.data_ptr(), q.stride(0), rows.data_ptr(), rows.numel(), q.shape[1], kv_heads, head_dim,
        key_cache.data_ptr(), value_cache.data_ptr(), block_size, tables.data_ptr(), tables.stride(0),
        context_lens.data_ptr(), max_context, head_dim ** -0.5, out.data_ptr(), out.stride(0))
    if status != 0:
        raise MemoryError("paged decode attention kernel: scratch allocation failed")


def supports_rotary(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether `rotary` can rotate x [T, heads, head_dim] in place with cos/sin [T, head_dim]."""
    return (x.device.type == "cpu" and x.dtype == cos.dtype == torch.float32 and x.shape[2] % 16 == 0
            and x.stride(2) == 1 and x.stride(1) == x.shape[2] and cos.is_contiguous() and enabled())


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, written into x (which is returned)."""
    tokens, heads, head_dim = x.shape
    library().opslab_rotary(x.data_ptr(), tokens, heads, head_dim, x.stride(0), cos.data_ptr(),
                            sin.contiguous().data_ptr())
    return x


def supports_elementwise(x: torch.Tensor, multiple: int = 8) -> bool:
    """Whether silu_mul / rms_norm take x: float32 on the CPU, last dimension a multiple of `multiple`."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[-1] % multiple == 0 and enabled()


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [..., 2 * size] holding [gate | up]."""
    size = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * size).contiguous()
    out = torch.empty(rows.shape[0], size, dtype=torch.float32)
    library().opslab_silu_mul(rows.data_ptr(), rows.shape[0], size, out.data_ptr())
    return out.reshape(*gate_up.shape[:-1], size)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty_like(rows)
    library().opslab_rms_norm(rows.data_ptr(), rows.shape[0], rows.shape[1], weight.contiguous().data_ptr(), eps,
                              out.data_ptr())
    return out.reshape(x.shape)


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
