"""Where the lab hosts are: topology.yml, ports.yml and any Ansible inventory, read in one place."""
from __future__ import annotations

import configparser
import contextlib
import io
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from lab_tasks.errors import LabError
from lab_tasks.registry import PACKAGE_DIR, PROJECT_ROOT

DEFAULT_INVENTORY = "inventory/sandbox/hosts.yml"
INVENTORY_FIX = "run `lab sandbox up` or pass -i INVENTORY"


@cache
def topology() -> dict:
    """lab_tasks/topology.yml: hosts, groups, addresses, bridge, VIP."""
    return yaml.safe_load((PACKAGE_DIR / "topology.yml").read_text())


@cache
def ports() -> dict[str, int]:
    """lab_tasks/ports.yml's `opslab_ports`: every port by name."""
    return yaml.safe_load((PACKAGE_DIR / "ports.yml").read_text())["opslab_ports"]


def default_inventory_path() -> Path:
    """$OPSLAB_INVENTORY, else the inventory ansible.cfg names, relative to the project root."""
    if os.environ.get("OPSLAB_INVENTORY"):
        return Path(os.environ["OPSLAB_INVENTORY"])
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / "ansible.cfg")
    return PROJECT_ROOT / config.get("defaults", "inventory", fallback=DEFAULT_INVENTORY)


@dataclass(frozen=True)
class HostInfo:
    """How to reach one lab host over SSH."""

    name: str
    address: str
    user: str
    port: int
    key_file: str | None


class Inventory:
    """An Ansible inventory (any format Ansible reads), asked for hosts and SSH parameters."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise LabError(f"inventory {self.path} not found; {INVENTORY_FIX}")
        self._manager, self._variables = _parse(self.path)

    def hosts(self, pattern: str) -> list[str]:
        """Host names matching an ansible pattern (group, host, `a:b`)."""
        return [h.name for h in self._manager.get_hosts(pattern)]

    def host_vars(self, name: str) -> dict:
        """Every inventory variable of a host (host, group and `all` vars)."""
        host = self._manager.get_host(name)
        if host is None:
            raise LabError(f"host '{name}' is not in inventory {self.path}; see `lab sandbox status`")
        return self._variables.get_vars(host=host, include_hostvars=False)

    def host(self, name: str) -> HostInfo:
        """SSH parameters of a host, with Ansible's defaults."""
        hv = self.host_vars(name)
        key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
        return HostInfo(
            name=name,
            address=str(hv.get("ansible_host", name)),
            user=str(hv.get("ansible_user", "root")),
            port=int(hv.get("ansible_port", ports()["ssh"])),
            key_file=os.path.expanduser(str(key)) if key else None,
        )

    @property
    def vip(self) -> str:
        """`opslab_vip` from the inventory, else the topology's VIP."""
        names = self.hosts("all")
        found = self.host_vars(names[0]).get("opslab_vip") if names else None
        return str(found or topology()["network"]["vip"])


def _parse(path: Path):
    """Parse with Ansible's own inventory plugins; failure is a one-line LabError."""
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "1")
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader, warnings = DataLoader(), io.StringIO()
    try:
        with contextlib.redirect_stderr(warnings), contextlib.redirect_stdout(warnings):
            manager = InventoryManager(loader=loader, sources=[str(path)])
    except AnsibleError:
        reason = _first_warning(warnings.getvalue())
        raise LabError(f"inventory {path} is broken ({reason}); {INVENTORY_FIX}") from None
    return manager, VariableManager(loader=loader, inventory=manager)


def _first_warning(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("[WARNING]:"):
            return line.removeprefix("[WARNING]:").strip()
    return "Ansible could not parse it"
