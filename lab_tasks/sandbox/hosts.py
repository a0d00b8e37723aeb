"""One lab host: an overlayfs over the golden image, booted by systemd-nspawn, tracked by its PID file.

Per host, under /var/lib/opslab/hosts/<name>/: upper/ work/ (the overlay's writable layer), root/ (the
merged mount nspawn boots), nspawn.pid, image (which image the overlay sits on), cgroups (the cgroup
directories made for it), console.log (the boot console) and, on docker hosts, docker/ (/var/lib/docker).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab_tasks.errors import LabError
from lab_tasks.sandbox import cgroups
from lab_tasks.sandbox.image import Image
from lab_tasks.sandbox.paths import HOSTS_DIR

DOCKER_BASE_IN_HOST = "/opt/opslab/images/debian-bookworm-rootfs.tar"
NETWORK_FILE = "etc/systemd/network/10-lab.network"
CGROUP_RW_UNIT = "opslab-cgroup-rw.service"
STOP_TIMEOUT_S = 30


@dataclass(frozen=True)
class LabHost:
    """A lab host from the topology and where its state lives."""

    name: str
    address: str
    prefixlen: int
    gateway: str
    features: tuple[str, ...] = field(default=())

    @property
    def dir(self) -> Path:
        return HOSTS_DIR / self.name

    @property
    def root(self) -> Path:
        """The merged overlay mount the container boots from."""
        return self.dir / "root"

    @property
    def log(self) -> Path:
        return self.dir / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def docker(self) -> bool:
        """Whether this host runs Docker (and gets the privileges for it)."""
        return "docker" in self.features


def read_pid(host: LabHost) -> int | None:
    """The recorded nspawn PID, if that process still is this host's nspawn."""
    try:
        pid = int(host.pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"--machine={host.name}".encode() in cmdline else None


def is_mounted(path: Path) -> bool:
    """Whether a filesystem is mounted exactly at path."""
    return os.path.ismount(path)


def recorded_image(host: LabHost) -> str | None:
    """The image path this host's overlay was made on, if any."""
    stamp = host.dir / "image"
    return stamp.read_text().strip() if stamp.exists() else None


def mount_overlay(host: LabHost, image: Image) -> None:
    """Mount the host's overlay over the image (upper/work persist until `down`)."""
    for sub in ("upper", "work", "root"):
        (host.dir / sub).mkdir(parents=True, exist_ok=True)
    (host.dir / "image").write_text(f"{image.path}\n")
    if not is_mounted(host.root):
        options = f"lowerdir={image.rootfs},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(host.root)], check=True)


def write_identity(host: LabHost) -> None:
    """Hostname (+ /etc/hosts line), static network, and on docker hosts their extras, in the overlay."""
    (host.root / "etc/hostname").write_text(f"{host.name}\n")
    hosts_file = host.root / "etc/hosts"
    if not hosts_file.exists() or host.name not in hosts_file.read_text().split():
        with hosts_file.open("a") as hosts:
            hosts.write(f"{host.address}\t{host.name}\n")
    (host.root / NETWORK_FILE).write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={host.address}/{host.prefixlen}\nGateway={host.gateway}\nLinkLocalAddressing=no\n"
    )
    if host.docker:
        prepare_docker(host)


def prepare_docker(host: LabHost) -> None:
    """Enable the cgroup remount unit; make /var/lib/docker's real directory and the bind mount points."""
    wants = host.root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    if not (wants / CGROUP_RW_UNIT).is_symlink():
        (wants / CGROUP_RW_UNIT).symlink_to(f"/etc/systemd/system/{CGROUP_RW_UNIT}")
    (host.dir / "docker").mkdir(exist_ok=True)
    (host.root / "var/lib/docker").mkdir(parents=True, exist_ok=True)
    base_tar = host.root / DOCKER_BASE_IN_HOST.lstrip("/")
    base_tar.parent.mkdir(parents=True, exist_ok=True)
    base_tar.touch()


def nspawn_argv(host: LabHost, image: Image, bridge: str) -> list[str]:
    """The systemd-nspawn command line that boots the host."""
    argv = ["systemd-nspawn", "--boot", "--quiet", f"--directory={host.root}", f"--machine={host.name}",
            "--register=no", "--keep-unit", f"--network-bridge={bridge}", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off"]
    if host.docker:
        argv += ["--system-call-filter=@keyring", f"--bind={host.dir / 'docker'}:/var/lib/docker",
                 f"--bind-ro={image.docker_base}:{DOCKER_BASE_IN_HOST}"]
    return argv


def start(host: LabHost, image: Image, bridge: str) -> int:
    """Boot the host in its own cgroups; the PID is recorded before nspawn runs."""
    groups = cgroups.create(host.name)
    (host.dir / "cgroups").write_text("".join(f"{g}\n" for g in groups))
    with host.log.open("ab") as log:
        proc = subprocess.Popen(
            nspawn_argv(host, image, bridge), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: cgroups.join(groups),
        )
    host.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def signal_stop(host: LabHost) -> int | None:
    """Ask nspawn to shut the container down cleanly (SIGTERM to nspawn, never SIGRTMIN+4)."""
    pid = read_pid(host)
    if pid:
        os.kill(pid, signal.SIGTERM)
    return pid


def wait_stopped(host: LabHost, pid: int | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """Wait for the nspawn process to end; kill it after the timeout."""
    deadline = time.monotonic() + timeout
    while pid and read_pid(host) == pid and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if pid and read_pid(host) == pid:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if nspawn is our own child (started by this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def host_cgroups(host: LabHost) -> list[Path]:
    """The cgroup directories recorded for the host at its last start."""
    stamp = host.dir / "cgroups"
    return [Path(line) for line in stamp.read_text().split()] if stamp.exists() else []


def clear_leftovers(host: LabHost) -> None:
    """Kill what an nspawn that died left running in the host's cgroups, and its veth on the bridge."""
    cgroups.kill_all([d for d in host_cgroups(host) if d.is_dir()])
    subprocess.run(["ip", "link", "del", f"vb-{host.name}"], capture_output=True)


def remove(host: LabHost) -> None:
    """Unmount the overlay and delete everything the host left: processes, cgroups, state, its disk."""
    clear_leftovers(host)
    if is_mounted(host.root) and subprocess.run(["umount", str(host.root)]).returncode != 0:
        raise LabError(f"cannot unmount {host.root} (busy?); leave any shell inside it and rerun `lab sandbox down`")
    cgroups.remove(host_cgroups(host))
    shutil.rmtree(host.dir, ignore_errors=True)
