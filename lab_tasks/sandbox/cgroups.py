"""Each lab host runs in its own cgroup in every cgroup v1 hierarchy, as a systemd machine scope would.

PID 1 of the control host is not systemd, so nobody else does this; Docker inside the docker lab host
needs it (its cgroup namespace then covers only the host's own subtree).
"""
from __future__ import annotations

import os
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


def remove(directories: list[Path]) -> None:
    """Remove the host's cgroups, deepest first (the container leaves sub-cgroups behind)."""
    for directory in directories:
        if not directory.is_dir():
            continue
        for sub, _dirs, _files in sorted(os.walk(directory), key=lambda entry: -entry[0].count("/")):
            try:
                os.rmdir(sub)
            except OSError:
                pass
        _remove_empty_parent(directory.parent)


def _remove_empty_parent(directory: Path) -> None:
    """Drop the shared `opslab` cgroup once no host uses it."""
    try:
        directory.rmdir()
    except OSError:
        pass
