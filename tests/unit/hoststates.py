"""Recorded host states for check tests: fake testinfra hosts, a Lab over them, and near-miss records.

A stage's recorded states live in tests/unit/hoststates_<stage id>.py (not collected by pytest):
`STAGE`, `solved(tmp_path) -> Lab` and `NEAR_MISSES` (a list of NearMiss). tests/unit/test_near_misses.py
proves each near miss fails its task with words that name the mistake; tests/unit/test_hints_leak.py runs
every check on every recorded state to collect the evidence strings it screens.
"""
from __future__ import annotations

import hashlib
import importlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab_tasks.checks import Lab
from lab_tasks.registry import load_registry


@dataclass
class FakeFile:
    """One path as testinfra's File sees it; `content=None` with kind "file" means missing."""

    content: str | None = None
    mode: int = 0o644
    user: str = "root"
    group: str = "root"
    kind: str = "file"  # file, directory, symlink, missing
    target: str | None = None  # symlink target

    @property
    def exists(self) -> bool:
        return self.kind != "missing" and not (self.kind == "file" and self.content is None)

    @property
    def is_file(self) -> bool:
        return self.exists and self.kind == "file"

    @property
    def is_directory(self) -> bool:
        return self.kind == "directory"

    @property
    def is_symlink(self) -> bool:
        return self.kind == "symlink"

    @property
    def linked_to(self) -> str | None:
        return self.target

    @property
    def content_string(self) -> str:
        if not self.is_file:
            raise AssertionError("content_string of something that is not a regular file")
        return self.content

    @property
    def sha256sum(self) -> str:
        return hashlib.sha256(self.content_string.encode()).hexdigest()


MISSING = FakeFile(kind="missing")


@dataclass(frozen=True)
class Result:
    """What a recorded command returned."""

    rc: int = 0
    stdout: str = ""
    stderr: str = ""

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    @property
    def failed(self) -> bool:
        return self.rc != 0


@dataclass
class FakeUser:
    """testinfra's User subset: exists, uid, gid, group (the primary one), shell, home, groups."""

    name: str
    uid: int = 1000
    shell: str = "/bin/bash"
    home: str | None = None
    groups: list[str] = field(default_factory=list)
    gid: int | None = None
    exists: bool = True
    group: str | None = None

    def __post_init__(self):
        self.home = self.home or f"/home/{self.name}"
        self.group = self.group or self.name
        self.groups = self.groups or [self.group]


@dataclass
class FakeGroup:
    """testinfra's Group subset."""

    name: str
    gid: int = 1000
    exists: bool = True


class FakeHost:
    """The testinfra Host subset the checks use, answering from recorded state only.

    `commands` maps the exact command line a check runs (after testinfra's `%s` quoting, without the
    `LC_ALL=C ` prefix of checks.common.run, which is ignored on both sides) to a Result or to its stdout. An unrecorded command raises, so a test states everything the check looked at."""

    def __init__(self, files: dict[str, FakeFile | str] | None = None,
                 commands: dict[str, Result | str] | None = None,
                 users: list[FakeUser] | None = None, groups: list[FakeGroup] | None = None):
        self.files = {path: FakeFile(f) if isinstance(f, str) else f for path, f in (files or {}).items()}
        self.commands = {cmd.removeprefix("LC_ALL=C "): Result(0, r) if isinstance(r, str) else r
                         for cmd, r in (commands or {}).items()}
        self.users = {u.name: u for u in users or []}
        self.groups = {g.name: g for g in groups or []}
        self.ran: list[str] = []
        self.backend = self

    def file(self, path: str) -> FakeFile:
        return self.files.get(path, MISSING)

    def run(self, command: str, *args) -> Result:
        line = command % tuple(shlex.quote(str(a)) for a in args) if args else command
        line = line.removeprefix("LC_ALL=C ")  # checks.common.run pins the locale; recordings leave it out
        self.ran.append(line)
        if line not in self.commands:
            raise AssertionError(f"unrecorded command on the fake host: {line!r}")
        return self.commands[line]

    def check_output(self, command: str, *args) -> str:
        result = self.run(command, *args)
        if result.rc != 0:
            raise AssertionError(f"{command} exited {result.rc}")
        return result.stdout.rstrip("\n")

    def user(self, name: str) -> FakeUser:
        return self.users.get(name, FakeUser(name, exists=False))

    def group(self, name: str) -> FakeGroup:
        return self.groups.get(name, FakeGroup(name, exists=False))

    def close(self) -> None:
        """Nothing to close (Lab.close calls it)."""


class FakeInventory:
    """Inventory subset for multi-host stages: `groups` {group: {host: address}}, the VIPs."""

    def __init__(self, groups: dict[str, dict[str, str]], vip: str = "10.213.7.100", path: str = "fake"):
        self.groups, self.vip, self.path = groups, vip, Path(path)
        self.addresses = {h: a for members in groups.values() for h, a in members.items()}

    def hosts(self, pattern: str) -> list[str]:
        names = []
        for part in pattern.split(":"):
            for name in self.groups.get(part, {part: None} if part in self.addresses else {}):
                if name not in names:
                    names.append(name)
        return names

    def host(self, name: str):
        from lab_tasks.topology import HostInfo
        return HostInfo(name, self.addresses[name], "root", 22, None)


def fake_lab(stage_id: str, hosts: dict[str, FakeHost], vars: dict | None = None,
             inventory: FakeInventory | None = None) -> Lab:
    """A real Lab for `stage_id` whose hosts are `hosts` ({"localhost": ...} without an inventory).

    `vars` replaces the role defaults the checks read (default: the role's defaults/main.yml)."""
    stage = load_registry().resolve(stage_id)
    lab = Lab(stage, inventory, local=inventory is None, connect=hosts.__getitem__)
    if inventory is None:
        lab.host_names = list(hosts)
    if vars is not None:
        lab.__dict__["vars"] = vars
    return lab


@dataclass(frozen=True)
class NearMiss:
    """A wrong or half-done state a learner plausibly reaches for `task`, and the words that must say so."""

    task: str
    mistake: str
    lab: Callable[[Path], Lab]
    says: str | tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return (self.says,) if isinstance(self.says, str) else tuple(self.says)


def state_module(stage_id: str):
    """tests/unit/hoststates_<stage id>.py, or None when that stage has none yet."""
    try:
        return importlib.import_module(f"hoststates_{stage_id}")
    except ModuleNotFoundError as exc:
        if exc.name != f"hoststates_{stage_id}":
            raise
        return None
