"""The lab bridge and the few iptables rules that keep lab traffic on it; both removed on `down`."""
from __future__ import annotations

import ipaddress
import json
import subprocess

from lab_tasks.errors import LabError

RULE_TAG = ["-m", "comment", "--comment", "opslab"]


def _ip_json(*args: str) -> list[dict]:
    """`ip -j ARGS` parsed; an absent device reads as an empty list."""
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    return json.loads(done.stdout or "[]") if done.returncode == 0 else []


def ensure_bridge(bridge: str, gateway: str, subnet: str) -> None:
    """Create the bridge with the control host's lab address, or accept ours if it is already there."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    links = _ip_json("-d", "addr", "show", "dev", bridge)
    if links:
        _check_ours(links[0], bridge, f"{gateway}/{prefix}")
        return
    _check_subnet_free(bridge, subnet)
    for argv in (["link", "add", bridge, "type", "bridge"],
                 ["addr", "add", f"{gateway}/{prefix}", "dev", bridge],
                 ["link", "set", bridge, "up"]):
        subprocess.run(["ip", *argv], check=True)


def _check_ours(link: dict, bridge: str, cidr: str) -> None:
    """An existing device of our name must be a bridge holding our address."""
    kind = link.get("linkinfo", {}).get("info_kind")
    addresses = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"}
    if kind != "bridge" or addresses != {cidr}:
        raise LabError(f"device {bridge} exists but is not the lab bridge ({sorted(addresses)}); "
                       f"remove it (`ip link del {bridge}`) or run `lab sandbox down`")


def _check_subnet_free(bridge: str, subnet: str) -> None:
    """No other interface may route the lab subnet."""
    for route in _ip_json("route", "show", "match", subnet):
        if route.get("dst") != "default" and route.get("dev") != bridge:
            raise LabError(f"the lab subnet {subnet} is already routed via {route.get('dev')}; "
                           "free it or change the network in lab_tasks/topology.yml")


def remove_bridge(bridge: str) -> None:
    """Delete the bridge and any host veth still enslaved to it (the kernel frees them lazily)."""
    for link in _ip_json("link", "show", "master", bridge):
        subprocess.run(["ip", "link", "del", link["ifname"]], capture_output=True)
    if _ip_json("link", "show", "dev", bridge):
        subprocess.run(["ip", "link", "del", bridge], check=True)


def wanted_rules(bridge: str) -> list[list[str]]:
    """FORWARD rules: lab hosts may talk to each other, nothing is routed into or out of the lab."""
    return [["-i", bridge, "-o", bridge, "-j", "ACCEPT"],
            ["-i", bridge, "-j", "DROP"],
            ["-o", bridge, "-j", "DROP"]]


def ensure_rules(bridge: str) -> None:
    """Insert the tagged FORWARD rules, in order, unless they are there already."""
    for position, rule in enumerate(wanted_rules(bridge), start=1):
        if _iptables("-C", "FORWARD", *rule, *RULE_TAG).returncode != 0:
            _iptables("-I", "FORWARD", str(position), *rule, *RULE_TAG, check=True)


def tagged_rules() -> list[str]:
    """Every FORWARD rule carrying our tag, as `iptables -S` prints it."""
    listing = _iptables("-S", "FORWARD").stdout.splitlines()
    return [line for line in listing if '--comment opslab' in line]


def remove_rules() -> None:
    """Delete every tagged rule."""
    for line in tagged_rules():
        _iptables("-D", *line.split()[1:], check=True)


def _iptables(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)
