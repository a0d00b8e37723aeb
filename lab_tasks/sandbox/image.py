"""The golden image: Debian 12 via debootstrap with every package the stages need, cached by recipe hash.

Layout of one cached image, `${OPSLAB_CACHE:-/var/cache/opslab}/image-<hash>/`:
  rootfs/                         the lower layer of every lab host's overlayfs
  debian-bookworm-rootfs.tar      a minbase rootfs for `docker import` (the Docker stage's base image)
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab_tasks.errors import LabError
from lab_tasks.sandbox.paths import CACHE_DIR, HOSTS_DIR
from lab_tasks.sandbox.build_steps import BuildSteps
from lab_tasks.sandbox.ssh import ensure_key

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES_FILE = Path(__file__).with_name("packages.txt")
CUSTOMIZE_SCRIPT = Path(__file__).with_name("recipe") / "customize.sh"
DOCKER_BASE_TAR = "debian-bookworm-rootfs.tar"
DOCKER_BASE_EXCLUDES = ("./dev/*", "./proc/*", "./sys/*", "./var/lib/apt/lists/*", "./var/cache/apt/*.bin")
BUILD_INPUTS = "/opslab-build"  # recipe and package list, inside the rootfs while it is built
NSPAWN_BUILD = ("systemd-nspawn", "--quiet", "--machine=opslab-build", "--register=no", "--keep-unit", "--as-pid2",
                "--resolv-conf=copy-host", "--timezone=off", "--link-journal=no")


@dataclass(frozen=True)
class Image:
    """One built image in the cache."""

    path: Path

    @property
    def rootfs(self) -> Path:
        """The root filesystem the hosts boot from (read-only lower layer)."""
        return self.path / "rootfs"

    @property
    def docker_base(self) -> Path:
        """The `docker import`-able base image tarball."""
        return self.path / DOCKER_BASE_TAR


def packages() -> list[str]:
    """The package names from packages.txt (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in PACKAGES_FILE.read_text().splitlines())
    return [line for line in lines if line]


def recipe_hash(public_key: str) -> str:
    """Hash of everything that shapes the image: suite, mirror, package list, recipe, lab key."""
    digest = hashlib.sha256(f"{SUITE} {MIRROR} minbase\n{public_key}\n".encode())
    for part in (PACKAGES_FILE, CUSTOMIZE_SCRIPT):
        digest.update(part.read_bytes())
    return digest.hexdigest()[:16]


def current_image() -> Image:
    """The image the current recipe describes (built or not)."""
    return Image(CACHE_DIR / f"image-{recipe_hash(ensure_key())}")


def ensure_image(rebuild: bool = False) -> Image:
    """Return the cached image for the current recipe, building it first when missing (or asked)."""
    image = current_image()
    if rebuild or not image.rootfs.is_dir():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with (CACHE_DIR / ".build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiting caller reuses its result
            if rebuild or not image.rootfs.is_dir():
                build(image)
    return image


def build(image: Image) -> None:
    """Build into a temporary directory next to the target, then rename it into place."""
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is not installed; run `make install`")
    remove_stale_builds()
    work = CACHE_DIR / f".build-{image.path.name}-{os.getpid()}"
    work.mkdir()
    progress = BuildSteps(CACHE_DIR / f"{image.path.name}.log")
    progress.log.write_text(f"build started {time.ctime()}\n")
    progress.console.print(f"Building the lab image {image.path} (a few minutes, once)")
    try:
        bootstrap(progress, work)
        customize(progress, work / "rootfs")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    replace(work, image.path)
    progress.step(f"image ready: {image.path}")
    prune(image)


def bootstrap(progress: BuildSteps, work: Path) -> None:
    """debootstrap a minbase rootfs and keep a tarball of it as the Docker base image."""
    rootfs = work / "rootfs"
    progress.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], step="debootstrap minbase")
    excludes = [f"--exclude={pattern}" for pattern in DOCKER_BASE_EXCLUDES]
    progress.run(["tar", "-C", str(rootfs), "--numeric-owner", *excludes, "-cf", str(work / DOCKER_BASE_TAR), "."],
                 step="docker base image tarball")


def customize(progress: BuildSteps, rootfs: Path) -> None:
    """Install the packages and configure the image inside a throwaway nspawn (recipe/customize.sh)."""
    inputs = rootfs / BUILD_INPUTS.lstrip("/")
    inputs.mkdir()
    (inputs / "packages.txt").write_text("\n".join(packages()) + "\n")
    (inputs / "authorized_keys").write_text(ensure_key() + "\n")
    shutil.copy(CUSTOMIZE_SCRIPT, inputs / "customize.sh")
    progress.run([*NSPAWN_BUILD, "-D", str(rootfs), "/bin/sh", f"{BUILD_INPUTS}/customize.sh"], step="customize")
    shutil.rmtree(inputs)


def replace(work: Path, target: Path) -> None:
    """Atomically move the finished build to its cache path (an older copy is removed)."""
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
        shutil.rmtree(old)
    work.rename(target)


def remove_stale_builds() -> None:
    """Delete half-finished builds left by interrupted runs."""
    for stale in CACHE_DIR.glob(".build-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def prune(keep: Image) -> None:
    """Delete older images (and their build logs) that no lab host's overlay sits on."""
    in_use = {stamp.read_text().strip() for stamp in HOSTS_DIR.glob("*/image")}
    for old in CACHE_DIR.glob("image-*"):
        image_path = old.with_name(old.name.removesuffix(".log"))
        if image_path == keep.path or str(image_path) in in_use:
            continue
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
