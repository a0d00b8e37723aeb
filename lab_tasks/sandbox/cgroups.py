"""Each lab host runs in its own cgroup in every cgroup v1 hierarchy, as a systemd machine scope would.

PID 1 of the control host is not systemd, so nobody else does this; Docker inside the docker lab host
needs it (its cgroup namespace then covers only the host's own subtree).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def v1_hierarchies() -> dict[str, str]:
    """Mount point -> our own cgroup path, for every cgroup v1 hierarchy of this process."""
    ours = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number != "0" and controllers:
            ours[controllers.removeprefix("name=")] = path
    mounts = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup":
            options = fields[3].split(",")
            name = next((c for c in ours if set(c.split(",")) <= set(o.removeprefix("name=") for o in options)), None)
            if name:
                mounts[fields[1]] = ours[name]
    return mounts


def create(host: str) -> list[Path]:
    """Make <mount>/<our cgroup>/opslab/<host> in every v1 hierarchy; return the directories."""
    made = []
    for mount, path in v1_hierarchies().items():
        parent = Path(mount) / path.lstrip("/")
        for directory in (parent / "opslab", parent / "opslab" / host):
            directory.mkdir(exist_ok=True)
            _inherit_cpuset(directory)
        made.append(parent / "opslab" / host)
    return made


def _inherit_cpuset(directory: Path) -> None:
    """A new cpuset cgroup has no CPUs or memory nodes until given its parent's (else ENOSPC on join)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = directory / name
        if own.exists() and not own.read_text().strip():
            own.write_text((directory.parent / name).read_text())


def join(directories: list[Path]) -> None:
    """Move the calling process into the given cgroups (runs in the child right before exec)."""
    for directory in directories:
        (directory / "cgroup.procs").write_text(str(os.getpid()))


def kill_all(directories: list[Path]) -> None:
    """SIGKILL every process left in these cgroups and their sub-cgroups (a container orphaned by nspawn)."""
    for directory in directories:
        for path, _dirs, _files in os.walk(directory):
            for pid in (Path(path) / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def remove(directories: list[Path], timeout: float = 10) -> None:
    """Remove the host's cgroups, deepest first; retry while the last processes in them finish exiting."""
    deadline = time.monotonic() + timeout
    for directory in directories:
        while directory.is_dir() and not _rmdir_tree(directory) and time.monotonic() < deadline:
            kill_all([directory])
            time.sleep(0.2)
        _rmdir_tree(directory.parent, recursive=False)  # the shared `opslab` cgroup, once no host uses it


def _rmdir_tree(directory: Path, recursive: bool = True) -> bool:
    """rmdir the cgroup (and its sub-cgroups, deepest first); True when it is gone."""
    walk = sorted(os.walk(directory), key=lambda entry: -entry[0].count("/")) if recursive else [(str(directory),)]
    for entry in walk:
        try:
            os.rmdir(entry[0])
        except OSError:
            pass
    return not directory.exists()
