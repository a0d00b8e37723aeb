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

The same sources are compiled once per instruction-set path (PATHS): "avx2" (AVX2 + FMA + F16C), "avx512"
(that plus AVX-512 F/BW/VL/DQ and VNNI; the headers select wider code with `#if defined(__AVX512F__)`) and
"avx512bf16" (that plus AVX512_BF16: the output head's products in bf16, see linear.h).
Each path is its own shared library, so no instruction leaks into a path whose CPU check did not pass, and
nothing is built with -march=native. The path is chosen at run time from /proc/cpuinfo (the widest the CPU
has); OPSLAB_CPU_PATH=avx2|avx512|avx512bf16 forces one the CPU supports (all can be loaded side by side in one
process: tests and benchmarks compare them that way). `describe()` names the path, the CPU and its flags.
AMX (tile) code is not written yet: `describe()` reports whether the CPU has AMX and the kernel grants it.

Each library is cached by a hash of the sources, the flags and the compiler in $OPSLAB_KERNEL_CACHE
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
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("linear_avx2.c", "attention_avx2.c",
                                                            "elementwise_avx2.c", "decoder_avx2.c"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("simd.h", "linear.h", "attention.h", "elementwise.h"))
CFLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-Wall")
LIBS = ("-lm",)


@dataclass(frozen=True)
class CpuPath:
    """One build of the kernels: the compiler's instruction-set flags and the CPU flags they need.
    `bf16_products`: grouped int8 weights (the output head) meet x in bf16 products, at every row count
    (linear.h's bf16_tiles)."""
    name: str
    compiler_flags: tuple[str, ...]
    cpu_flags: tuple[str, ...]
    bf16_products: bool = False


_AVX2 = CpuPath("avx2", ("-mavx2", "-mfma", "-mf16c"), ("avx2", "fma", "f16c"))
_AVX512 = CpuPath("avx512", _AVX2.compiler_flags + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                                                    "-mavx512vnni"),
                  _AVX2.cpu_flags + ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"))
_AVX512_BF16 = CpuPath("avx512bf16", _AVX512.compiler_flags + ("-mavx512bf16",), _AVX512.cpu_flags + ("avx512_bf16",),
                       bf16_products=True)
# widest first: the order the run-time choice tries
PATHS = {path.name: path for path in (_AVX512_BF16, _AVX512, _AVX2)}
PATH_ENV = "OPSLAB_CPU_PATH"
AMX_CPU_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
FORMATS = {"float32": 0, "int8": 1, "int4": 2, "w8a8": 3}
KV_CACHE_DTYPES = (torch.float32, torch.float16)  # KV caches the attention kernels read (float16 through F16C)
ROWS = 4  # output rows per block in the kernel: out_features must be a multiple
log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """The fused kernels cannot run here (the message says why)."""


class CpuPathError(ValueError):
    """OPSLAB_CPU_PATH names a path that is unknown or that this CPU cannot run: a configuration error, raised
    rather than quietly falling back to the PyTorch path."""


def cache_dir() -> Path:
    return Path(os.environ.get("OPSLAB_KERNEL_CACHE", "~/.cache/opslab/kernels")).expanduser()


def enabled() -> bool:
    """True when the kernels are switched on and build/load on this machine (built on the first call); a bad
    OPSLAB_CPU_PATH raises CpuPathError."""
    try:
        library()
    except KernelUnavailable:
        return False
    return True


def library() -> ctypes.CDLL:
    """The loaded kernel library of the chosen path (`chosen_path()`); raises KernelUnavailable with the reason
    when it cannot be had."""
    return load(chosen_path())


def chosen_path() -> str:
    """The path the kernels run: $OPSLAB_CPU_PATH when set (it must be one this CPU supports, else CpuPathError),
    else the widest this CPU supports. Raises KernelUnavailable with the reason when there is none."""
    if os.environ.get("OPSLAB_CPU_KERNELS", "1") == "0":
        raise KernelUnavailable("switched off by OPSLAB_CPU_KERNELS=0")
    if platform.machine() not in ("x86_64", "AMD64"):
        raise KernelUnavailable(f"needs an x86-64 CPU, this is {platform.machine()}")
    forced = os.environ.get(PATH_ENV)
    if forced:
        if forced not in PATHS:
            raise CpuPathError(f"{PATH_ENV}={forced!r} is not a kernel path; choose one of {', '.join(PATHS)}")
        missing = missing_flags(forced)
        if missing:
            raise CpuPathError(f"{PATH_ENV}={forced} needs {', '.join(missing)}, which this CPU ({cpu_model()}) "
                               f"lacks; choose one of {', '.join(supported_paths()) or 'none'}")
        return forced
    supported = supported_paths()
    if not supported:
        raise KernelUnavailable(f"the CPU ({cpu_model()}) lacks {', '.join(missing_flags('avx2'))}")
    return supported[0]


def missing_flags(path: str) -> list[str]:
    """The CPU flags path `path` needs that this CPU lacks (empty when it can run)."""
    flags = _cpu_info()[1]
    return [flag for flag in PATHS[path].cpu_flags if flag not in flags]


def supported_paths() -> list[str]:
    """The paths this CPU can run, widest first."""
    return [name for name in PATHS if not missing_flags(name)]


def cpu_model() -> str:
    return _cpu_info()[0]


def cpu_flags() -> list[str]:
    """The CPU's flags as /proc/cpuinfo lists them, sorted."""
    return sorted(_cpu_info()[1])


def describe() -> dict:
    """What the kernels run on: {"path", "cpu_model", "cpu_flags", "isa_flags" (those of cpu_flags the paths
    look at), "supported_paths", "amx"}; "path" is None (and "reason" says why) when the kernels are
    unavailable. For logs, /metrics and benchmark results."""
    looked_at = {flag for path in PATHS.values() for flag in path.cpu_flags} | set(AMX_CPU_FLAGS)
    info = {"path": None, "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "isa_flags": [flag for flag in cpu_flags() if flag in looked_at], "supported_paths": supported_paths(),
            "amx": amx_status()}
    try:
        info["path"] = chosen_path()
    except (KernelUnavailable, CpuPathError) as reason:
        info["reason"] = str(reason)
    return info


ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1023, 18, 158


@functools.cache
def amx_status() -> str:
    """"not present" (the CPU lacks AMX), "not permitted: <why>" (the kernel refused the tile state), or
    "available" (no kernel uses it yet: AMX tile code is still to be written)."""
    missing = [flag for flag in AMX_CPU_FLAGS if flag not in _cpu_info()[1]]
    if missing:
        return "not present"
    # Linux hands out the 8 KiB tile-data state only to processes that ask for it (Linux >= 5.16).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        return f"not permitted: arch_prctl(ARCH_REQ_XCOMP_PERM) failed: {os.strerror(ctypes.get_errno())}"
    return "available"


@functools.cache
def load(path: str) -> ctypes.CDLL:
    """The kernel library built for `path` (compiled on first use), whether or not it is the chosen one; the
    caller makes sure the CPU supports it (chosen_path() or supported_paths())."""
    lib = ctypes.CDLL(str(_compiled(PATHS[path])))
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
    lib.opslab_paged_decode_attention.argtypes = [pointer, i64, pointer, i64, i64, i64, i64, pointer, pointer,
                                                  ctypes.c_int, i64, pointer, i64, pointer, i64, ctypes.c_float,
                                                  pointer, i64]
    log.info("CPU kernels: %s path on %s (supported here: %s; amx: %s)", path, cpu_model(),
             ", ".join(supported_paths()), amx_status())
    return lib


@functools.cache
def _cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("unknown CPU", {}) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU", frozenset()
    model, flags = "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
            break
    return model, flags


def _compiled(path: CpuPath) -> Path:
    """Compile the sources for `path` unless a library for them, these flags and this compiler is cached."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C compiler ({compiler!r} is not on PATH; `make install` installs gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    flags = CFLAGS + path.compiler_flags
    digest = hashlib.sha256(" ".join(flags + LIBS).encode() + version.encode())
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    target = cache_dir() / f"opslab_kernels-{path.name}-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, "-o", str(built), *map(str, SOURCES), *LIBS],
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
    """Whether `paged_decode_attention` can take these queries and this cache (float32 queries; a float32 or
    float16 cache)."""
    heads, kv_heads, head_dim = q.shape[1], key_cache.shape[2], key_cache.shape[3]
    return (q.device.type == "cpu" and q.dtype == torch.float32 and key_cache.dtype in KV_CACHE_DTYPES
            and head_dim % 8 == 0
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
        key_cache.data_ptr(), value_cache.data_ptr(), int(key_cache.dtype == torch.float16), block_size,
        tables.data_ptr(), tables.stride(0), context_lens.data_ptr(), max_context, head_dim ** -0.5, out.data_ptr(),
        out.stride(0))
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
