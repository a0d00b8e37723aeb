"""The installed package is the product: the wheel holds lab_tasks and inference, and no measuring code."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def checkout_copy(target: Path) -> Path:
    """The tree's files git knows or would add (no build/ leftovers, no venv), copied to `target`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.timeout(300)
def test_wheel_ships_the_product_without_benchmarks_or_peers(tmp_path):
    source = checkout_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=280)
    (wheel,) = (tmp_path / "dist").glob("opslab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"inference", "lab_tasks", wheel.name.split("-py3")[0]
                                                      + ".dist-info"}
    assert "inference/bench/load.py" in names  # the product's load tester (`lab bench`) ships
    measuring = [name for name in names if name.startswith(("benchmarks/", "inference/peers/", "inference/benchmark"))]
    assert measuring == []
