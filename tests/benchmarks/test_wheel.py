"""The installed package is the product: the wheel holds lab_tasks and inference, and no measuring code."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_wheel_ships_the_product_without_benchmarks_or_peers(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=280)
    (wheel,) = tmp_path.glob("opslab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"inference", "lab_tasks", wheel.name.split("-py3")[0]
                                                      + ".dist-info"}
    assert "inference/bench/load.py" in names  # the product's load tester (`lab bench`) ships
    measuring = [name for name in names if name.startswith(("benchmarks/", "inference/peers/", "inference/benchmark"))]
    assert measuring == []
