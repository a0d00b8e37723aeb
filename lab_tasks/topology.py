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
LB_GROUP = "lb"                # stages 5-6: the learner's VRRP pair
EDGE_GROUP = "edge"            # capstone: the balancers in front of the inference nodes
INFERENCE_GROUP = "inference"  # capstone: the "GPU nodes" running our server
INVENTORY_FIX = "run `lab sandbox up` or pass -i INVENTORY"


@cache
def topology() -> dict:
    """lab_tasks/topology.yml: hosts, groups, addresses, bridge, VIPs."""
    return yaml.safe_load((PACKAGE_DIR / "topology.yml").read_text())


def vips() -> dict[str, str]:
    """Every keepalived VIP of the topology by the group that shares it: {"lb": ..., "edge": ...}."""
    return {group: str(spec["address"]) for group, spec in topology()["vips"].items()}


def vip(group: str = LB_GROUP) -> str:
    """The topology's VIP of `group` (LabError naming the groups that have one)."""
    spec = topology()["vips"].get(group)
    if spec is None:
        raise LabError(f"group '{group}' has no VIP; groups with one: {', '.join(topology()['vips'])}")
    return str(spec["address"])


def vip_variable(group: str) -> str:
    """The inventory variable that carries the VIP of `group` (`opslab_vip`, `opslab_edge_vip`)."""
    vip(group)
    return str(topology()["vips"][group]["variable"])


def group_hosts(group: str) -> list[str]:
    """The topology's hosts in `group`, in topology order."""
    return [name for name, spec in topology()["hosts"].items() if group in spec["groups"]]


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
        """Host names matching an ansible pattern (group, host, `a:b`); none (and no warning) for an unknown one."""
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
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
        """The `lb` group's VIP: `opslab_vip` from the inventory, else the topology's."""
        return self.vip_of(LB_GROUP)

    @property
    def edge_vip(self) -> str:
        """The `edge` group's VIP (the inference API): `opslab_edge_vip`, else the topology's."""
        return self.vip_of(EDGE_GROUP)

    def vip_of(self, group: str) -> str:
        """The VIP of `group` from its inventory variable (set on `all` or the group), else the topology's."""
        variable = vip_variable(group)
        names = self.hosts(group) or self.hosts("all")
        found = self.host_vars(names[0]).get(variable) if names else None
        return str(found or vip(group))

    def endpoints(self) -> dict:
        """Where the inference platform answers, from this inventory's addresses."""
        nodes = [self.host(name).address for name in self.hosts(INFERENCE_GROUP)]
        return inference_endpoints(self.edge_vip, nodes)


def inference_endpoints(edge_vip: str, node_addresses: list[str]) -> dict:
    """{"inference": the API at the edge VIP, "inference_nodes": each node's server, for direct checks}."""
    http, port = ports()["http"], ports()["inference"]
    api = f"http://{edge_vip}" if http == 80 else f"http://{edge_vip}:{http}"
    return {"inference": api, "inference_nodes": [f"http://{a}:{port}" for a in node_addresses]}


def endpoints() -> dict:
    """Where the inference platform answers in the topology (the sandbox)."""
    addresses = [topology()["hosts"][name]["address"] for name in group_hosts(INFERENCE_GROUP)]
    return inference_endpoints(vip(EDGE_GROUP), addresses)


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
