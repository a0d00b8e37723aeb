"""What a check function gets (Lab) and returns (Verdict); the runner turns Verdicts into CheckResults."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import yaml
from testinfra.host import Host

from lab_tasks import httpprobe
from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, Stage
from lab_tasks.remote import ensure_reachable, local_host, ssh_host
from lab_tasks.topology import LB_GROUP, Inventory, ports, vip


@dataclass(frozen=True)
class Verdict:
    """A check's answer: passed or not, and the evidence (what was expected vs found)."""

    passed: bool
    evidence: str


@dataclass(frozen=True)
class CheckResult:
    """One task's result as reported: the Verdict plus the task id and the registry hint."""

    task_id: str
    passed: bool
    evidence: str
    hint: str


def expect(condition: object, *, expected: object, found: object) -> Verdict:
    """A Verdict that passes when `condition` holds, with evidence `expected X; found Y`."""
    return Verdict(bool(condition), f"expected {expected}; found {found}")


class Lab:
    """The lab as a check sees it: testinfra Hosts, inventory names and addresses, ports, role defaults."""

    def __init__(self, stage: Stage, inventory: Inventory | None = None, *, target: str | None = None,
                 local: bool = False, connect: Callable[[str], Host] | None = None):
        self.stage = stage
        self.inventory = inventory
        self.is_local = local
        self.host_names = [target] if target else self._stage_hosts()
        self._connect = connect or self._default_connect
        self._hosts: dict[str, Host] = {}
        self.drills_dir: Path | None = None  # where `lab drill` results are read; None: its own state dir

    def _stage_hosts(self) -> list[str]:
        if self.inventory is None:
            return ["localhost"]
        names = self.inventory.hosts(self.stage.host_pattern)
        if not names:
            raise LabError(f"no hosts for {self.stage.id} ({self.stage.host_pattern}) in inventory "
                           f"{self.inventory.path}; run `lab sandbox up` or pass -i INVENTORY")
        return names

    def _default_connect(self, name: str) -> Host:
        if self.is_local:
            return local_host()
        return ssh_host(self.inventory.host(name))

    def host(self, name: str | None = None) -> Host:
        """The testinfra Host `name` (default: the stage's first host), connected once."""
        name = name or self.host_names[0]
        if name not in self._hosts:
            self._hosts[name] = self._connect(name)
        return self._hosts[name]

    def hosts(self, group: str | None = None) -> list[str]:
        """Host names of the stage, or of an inventory group."""
        if group is None or self.inventory is None:
            return list(self.host_names)
        return self.inventory.hosts(group)

    def address(self, name: str) -> str:
        """The address a host is reached at."""
        if self.inventory is None:
            return "127.0.0.1"
        return self.inventory.host(name).address

    @property
    def vip(self) -> str:
        """The keepalived virtual IP."""
        if self.inventory is None:
            return vip(LB_GROUP)
        return self.inventory.vip

    @property
    def ports(self) -> dict[str, int]:
        """Every lab port by name (lab_tasks/ports.yml)."""
        return ports()

    def http_get(self, url: str) -> httpprobe.Reply:
        """GET `url` from the control host: the one way checks talk HTTP to the lab (recorded states replace it)."""
        return httpprobe.get(url)

    @cached_property
    def vars(self) -> dict:
        """The stage role's defaults (roles/<role>/defaults/main.yml): paths the checks share with it."""
        path = PROJECT_ROOT / "roles" / self.stage.role / "defaults" / "main.yml"
        return yaml.safe_load(path.read_text()) or {}

    def ensure_reachable(self) -> None:
        """Fatal first step: every stage host answers, or a LabError naming the first one that does not."""
        for name in self.host_names:
            info = None if self.is_local or self.inventory is None else self.inventory.host(name)
            ensure_reachable(self.host(name), info)

    def close(self) -> None:
        """Close every connection this Lab opened."""
        for host in self._hosts.values():
            close = getattr(host.backend, "close", None)
            if close:
                close()
