"""scripts/build-peers.sh picks the instruction sets from the CPU it runs on: AVX-512/VNNI/BF16 where the CPU
has them, never AMX (ggml's AMX matmul segfaults on the Xeons this project meets) and never GGML_NATIVE."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-peers.sh"
SAPPHIRE_RAPIDS = ("fpu sse4_1 sse4_2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi "
                   "avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8")
ZEN3 = "fpu sse4_1 sse4_2 avx f16c fma bmi2 avx2"


def flags_for(tmp_path: Path, model: str, flags: str) -> dict[str, str]:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n")
    out = subprocess.run([SCRIPT, "cmake-flags"], env={"OPSLAB_CPUINFO": str(cpuinfo), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    return dict(arg.removeprefix("-D").split("=") for arg in out.split())


def test_a_xeon_with_amx_gets_avx512_and_vnni_but_no_amx(tmp_path):
    flags = flags_for(tmp_path, "Intel(R) Xeon(R) Platinum 8480+", SAPPHIRE_RAPIDS)
    assert flags["GGML_NATIVE"] == "OFF"
    assert {flags[f"GGML_AMX_{kind}"] for kind in ("TILE", "INT8", "BF16")} == {"OFF"}
    for option in ("AVX2", "FMA", "F16C", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"):
        assert flags[f"GGML_{option}"] == "ON", option


def test_an_avx2_only_epyc_gets_avx2_and_nothing_it_lacks(tmp_path):
    flags = flags_for(tmp_path, "AMD EPYC 7B13", ZEN3)
    assert (flags["GGML_NATIVE"], flags["GGML_AVX2"], flags["GGML_FMA"]) == ("OFF", "ON", "ON")
    assert [name for name, value in flags.items() if value == "ON" and ("512" in name or "VNNI" in name)] == []


def test_avx512_needs_all_five_subsets(tmp_path):
    flags = flags_for(tmp_path, "partial", ZEN3 + " avx512f avx512bw")  # no cd/dq/vl: -mavx512vl would be wrong
    assert flags["GGML_AVX512"] == "OFF"


def test_unknown_peer_is_a_one_line_error():
    result = subprocess.run([SCRIPT, "vllm"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: unknown peer 'vllm'; pass") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("peer", ["llama-server"])
def test_a_cached_build_for_this_cpu_is_reused_quickly(peer, llama_server_peer):
    """`make peers` runs before every `make test`: with the build cached it must not rebuild."""
    result = subprocess.run([SCRIPT, peer], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "building" not in result.stdout, result.stdout + result.stderr
    assert Path(result.stdout.split(" -> ")[0].split(": ", 1)[1]).resolve() == llama_server_peer.resolve()
