"""The kernels' run-time choice of instruction-set path: the widest this CPU has, OPSLAB_CPU_PATH forcing one it
supports and refusing (naming the CPU) one it lacks, each path's library holding only its own instructions, the
AMX probe, and the path in describe() and /metrics. A path this CPU lacks is reported here as not exercised;
test_kernels.py and test_fused_decoder.py run every test once per path this CPU has."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from prometheus_client import generate_latest

from inference import kernels
from inference.server.metrics import ServerMetrics

AVX2_ONLY = frozenset(kernels.PATHS["avx2"].cpu_flags)


@pytest.fixture
def avx2_only_cpu(monkeypatch):
    """/proc/cpuinfo as an AVX2-only CPU would show it."""
    monkeypatch.setattr(kernels, "_cpu_info", lambda: ("Test CPU 3000", AVX2_ONLY))


@pytest.mark.parametrize("path", [*kernels.PATHS, "amx"])
def test_path_runs_on_this_cpu_or_is_reported_not_exercised(path, monkeypatch):
    """A path this CPU has computes what PyTorch does; one it lacks is reported as a skip naming the CPU."""
    if path == "amx":  # no AMX tile kernels yet: only the probe runs where the CPU has AMX
        lacking = [flag for flag in kernels.AMX_CPU_FLAGS if flag not in kernels.cpu_flags()]
        if lacking:
            pytest.skip(f"amx not exercised on {kernels.cpu_model()}: lacks {', '.join(lacking)}")
        assert kernels.amx_status() == "available" or kernels.amx_status().startswith("not permitted: ")
        return
    lacking = kernels.missing_flags(path)
    if lacking:
        pytest.skip(f"{path} path not exercised on {kernels.cpu_model()}: lacks {', '.join(lacking)}")
    monkeypatch.setenv(kernels.PATH_ENV, path)
    assert kernels.chosen_path() == path
    torch.manual_seed(0)
    x, weight = torch.randn(5, 96), torch.randn(8, 96)
    torch.testing.assert_close(kernels.linear(x, "float32", weight, 8), F.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("widest", "supported"), [("avx512bf16", ["avx512bf16", "avx512", "avx2"]),
                                                   ("avx512", ["avx512", "avx2"])])
def test_the_widest_supported_path_is_chosen(monkeypatch, widest, supported):
    """An AVX-512 CPU with BF16 (Zen 4/5, Sapphire Rapids) and one without it (Skylake-SP, Ice Lake)."""
    monkeypatch.delenv(kernels.PATH_ENV, raising=False)
    monkeypatch.setattr(kernels, "_cpu_info", lambda: ("Test CPU 5000", frozenset(kernels.PATHS[widest].cpu_flags)))
    assert kernels.supported_paths() == supported
    assert kernels.chosen_path() == widest


def test_an_avx2_cpu_runs_the_avx2_path(monkeypatch, avx2_only_cpu):
    monkeypatch.delenv(kernels.PATH_ENV, raising=False)
    assert kernels.supported_paths() == ["avx2"]
    assert kernels.chosen_path() == "avx2"


def test_forcing_a_path_the_cpu_lacks_is_an_error_naming_the_cpu_and_the_flags(monkeypatch, avx2_only_cpu):
    """Not a quiet fall-back to the PyTorch path: the engine's start (kernels.enabled()) fails with the reason."""
    monkeypatch.setenv(kernels.PATH_ENV, "avx512")
    with pytest.raises(kernels.CpuPathError, match=r"Test CPU 3000.*avx2$") as error:
        kernels.enabled()
    assert "avx512f" in str(error.value) and "avx512_vnni" in str(error.value)
    assert kernels.describe()["path"] is None and "Test CPU 3000" in kernels.describe()["reason"]


def test_an_unknown_path_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(kernels.PATH_ENV, "sse2")
    with pytest.raises(kernels.CpuPathError, match="choose one of avx512bf16, avx512, avx2"):
        kernels.chosen_path()


def test_a_cpu_without_avx2_has_no_path(monkeypatch):
    monkeypatch.delenv(kernels.PATH_ENV, raising=False)
    monkeypatch.setattr(kernels, "_cpu_info", lambda: ("Old CPU", frozenset({"sse2", "avx"})))
    with pytest.raises(kernels.KernelUnavailable, match="Old CPU.*lacks avx2, fma, f16c"):
        kernels.chosen_path()


@pytest.mark.parametrize("path", kernels.PATHS)
def test_each_library_holds_only_its_own_paths_instructions(path):
    """The avx2 library has no 512-bit register or mask-register use at all; the avx512 ones do (their wide code
    is there), and only the avx512bf16 one holds bf16 dot products. Building does not need the CPU, so all are
    checked on every machine."""
    objdump = shutil.which("objdump")
    if objdump is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs objdump (binutils) to inspect the kernel libraries")
        pytest.skip("objdump (binutils) is not installed")
    library = kernels._compiled(kernels.PATHS[path])
    disassembly = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                                 check=True).stdout
    wide = re.findall(r"%zmm\d+|%k[1-7]\b|%[xy]mm(?:1[6-9]|2\d|3[01])\b", disassembly)
    if path == "avx2":
        assert wide == []
    else:
        assert "vpdpwssd" in disassembly and any(name.startswith("%zmm") for name in wide)
    assert ("vdpbf16ps" in disassembly) == kernels.PATHS[path].bf16_products


def test_amx_probe_reports_a_cpu_without_amx(avx2_only_cpu):
    kernels.amx_status.cache_clear()
    try:
        assert kernels.amx_status() == "not present"
    finally:
        kernels.amx_status.cache_clear()


def test_amx_probe_asks_the_kernel_for_the_tile_state(monkeypatch):
    """With AMX in the flags, the probe makes the arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) call and reports a
    refusal with the kernel's reason (here a stand-in syscall refuses it)."""
    calls = []

    class FakeLibc:
        def syscall(self, *args):
            calls.append(args)
            ctypes.set_errno(22)
            return -1

    monkeypatch.setattr(kernels, "_cpu_info", lambda: ("AMX CPU", AVX2_ONLY | set(kernels.AMX_CPU_FLAGS)))
    monkeypatch.setattr(kernels.ctypes, "CDLL", lambda *args, **kwargs: FakeLibc())
    kernels.amx_status.cache_clear()
    try:
        assert kernels.amx_status() == f"not permitted: arch_prctl(ARCH_REQ_XCOMP_PERM) failed: {os.strerror(22)}"
    finally:
        kernels.amx_status.cache_clear()
    assert calls == [(158, 0x1023, 18)]


def test_describe_names_the_path_the_cpu_and_its_flags(monkeypatch, avx2_only_cpu):
    monkeypatch.delenv(kernels.PATH_ENV, raising=False)
    kernels.amx_status.cache_clear()
    try:
        info = kernels.describe()
    finally:
        kernels.amx_status.cache_clear()
    assert info == {"path": "avx2", "cpu_model": "Test CPU 3000", "cpu_flags": sorted(AVX2_ONLY),
                    "isa_flags": sorted(AVX2_ONLY), "supported_paths": ["avx2"], "amx": "not present"}
    monkeypatch.setenv("OPSLAB_CPU_KERNELS", "0")
    assert kernels.describe()["path"] is None and "OPSLAB_CPU_KERNELS=0" in kernels.describe()["reason"]


def test_metrics_show_the_path_as_an_info_metric(monkeypatch, avx2_only_cpu):
    monkeypatch.delenv(kernels.PATH_ENV, raising=False)
    text = generate_latest(ServerMetrics("tiny", lambda: None).registry).decode()
    line = next(line for line in text.splitlines() if line.startswith("opslab:cpu_kernels_info{"))
    assert 'path="avx2"' in line and 'cpu_model="Test CPU 3000"' in line and 'cpu_flags="avx2 f16c fma"' in line
    assert line.endswith(" 1.0")
