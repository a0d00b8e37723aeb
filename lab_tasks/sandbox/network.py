"""The lab bridge and the few iptables rules that keep lab traffic on it and off the control host; both removed
on `down`."""
from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from lab_tasks.errors import LabError

RULE_TAG = ["-m", "comment", "--comment", "opslab"]
CHAINS = ("FORWARD", "INPUT")


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
    else:
        _check_subnet_free(bridge, subnet)
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    _disable_ipv6(bridge)
    if not links:
        subprocess.run(["ip", "addr", "add", f"{gateway}/{prefix}", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)


def _disable_ipv6(bridge: str) -> None:
    """No IPv6 on the bridge: the lab is IPv4 only, and the INPUT rules are iptables (IPv4) rules."""
    switch = Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6")
    if switch.exists() and switch.read_text().strip() != "1":
        switch.write_text("1\n")


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


def forward_rules(bridge: str) -> list[list[str]]:
    """FORWARD rules: lab hosts may talk to each other, nothing is routed into or out of the lab."""
    return [["-i", bridge, "-o", bridge, "-j", "ACCEPT"],
            ["-i", bridge, "-j", "DROP"],
            ["-o", bridge, "-j", "DROP"]]


def input_rules(bridge: str, gateway: str, subnet: str, services: dict[str, int]) -> list[list[str]]:
    """INPUT rules for what lab hosts send to the control host itself: replies to its own connections
    (it SSHes into them; they use no DHCP, DNS or NTP), the named services on its bridge address, nothing else.
    Without them any control-host service bound to all addresses would answer every lab host."""
    allowed = [["-i", bridge, "-s", subnet, "-d", gateway, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"]
               for port in services.values()]
    return [["-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            *allowed,
            ["-i", bridge, "-j", "DROP"]]


def wanted_rules(bridge: str, gateway: str, subnet: str, services: dict[str, int]) -> dict[str, list[list[str]]]:
    """Every tagged rule by chain, in order."""
    return {"FORWARD": forward_rules(bridge), "INPUT": input_rules(bridge, gateway, subnet, services)}


def ensure_rules(wanted: dict[str, list[list[str]]]) -> None:
    """Put the tagged rules at the top of each chain, in order; a chain whose tagged rules differ is redone."""
    for chain, rules in wanted.items():
        present = all(_iptables("-C", chain, *rule, *RULE_TAG).returncode == 0 for rule in rules)
        if present and len(tagged_rules(chain)) == len(rules):
            continue
        remove_rules(chain)
        for position, rule in enumerate(rules, start=1):
            _iptables("-I", chain, str(position), *rule, *RULE_TAG, check=True)


def tagged_rules(*chains: str) -> list[str]:
    """Every rule carrying our tag in the given chains (default FORWARD and INPUT), as `iptables -S` prints it."""
    listing = [line for chain in chains or CHAINS for line in _iptables("-S", chain).stdout.splitlines()]
    return [line for line in listing if "--comment opslab" in line]


def remove_rules(*chains: str) -> None:
    """Delete every tagged rule (of the given chains, default all of ours)."""
    for line in tagged_rules(*chains):
        _iptables("-D", *line.split()[1:], check=True)


def _iptables(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)
