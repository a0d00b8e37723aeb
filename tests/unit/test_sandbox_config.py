"""Sandbox pieces that need no root: image hash, package list, nspawn command lines, inventory."""
from pathlib import Path

import pytest

from lab_tasks.errors import LabError
from lab_tasks.sandbox import image, lab, network
from lab_tasks.sandbox.hosts import DOCKER_BASE_IN_HOST, LabHost, nspawn_argv
from lab_tasks.topology import topology, vip

FAKE_IMAGE = image.Image(Path("/cache/image-x"))


def test_recipe_hash_follows_the_package_list(tmp_path, monkeypatch):
    before = image.recipe_hash("ssh-ed25519 AAAA lab")
    changed = tmp_path / "packages.txt"
    changed.write_text(image.PACKAGES_FILE.read_text() + "htop\n")
    monkeypatch.setattr(image, "PACKAGES_FILE", changed)
    assert image.recipe_hash("ssh-ed25519 AAAA lab") != before


def test_recipe_hash_follows_the_lab_key():
    assert image.recipe_hash("key-a") != image.recipe_hash("key-b")


def test_package_list_has_what_the_stages_need_and_no_comments():
    names = image.packages()
    assert {"openssh-server", "python3-apt", "nginx", "keepalived", "mariadb-server", "docker.io"} <= set(names)
    assert {"python3-venv", "gcc", "libc6-dev", "nftables"} <= set(names)  # the inference nodes
    assert all(" " not in name and not name.startswith("#") for name in names)


def test_only_the_docker_host_gets_docker_privileges():
    by_name = {host.name: host for host in lab.lab_hosts()}
    docker_argv = nspawn_argv(by_name["docker1"], FAKE_IMAGE, "opslab0")
    plain_argv = nspawn_argv(by_name["lb1"], FAKE_IMAGE, "opslab0")
    assert "--system-call-filter=@keyring" in docker_argv
    assert f"--bind-ro={FAKE_IMAGE.docker_base}:{DOCKER_BASE_IN_HOST}" in docker_argv
    assert not any(arg.startswith(("--system-call-filter", "--bind")) for arg in plain_argv)
    assert {"--register=no", "--keep-unit", "--network-bridge=opslab0", "--machine=lb1"} <= set(plain_argv)


def test_inventory_groups_addresses_and_vars_come_from_the_topology():
    inventory = lab.inventory()["all"]
    assert inventory["vars"]["opslab_vip"] == vip("lb")
    assert inventory["vars"]["opslab_edge_vip"] == vip("edge")
    assert inventory["vars"]["ansible_user"] == "root"
    assert inventory["children"]["lb"]["hosts"]["lb1"] == {"ansible_host": topology()["hosts"]["lb1"]["address"]}
    grouped = {name for group in inventory["children"].values() for name in group["hosts"]}
    assert grouped == set(topology()["hosts"])


def test_sandbox_inference_nodes_share_the_machines_cores(monkeypatch):
    monkeypatch.setattr(lab.os, "cpu_count", lambda: 2)
    assert lab.inventory()["all"]["children"]["inference"]["vars"] == {"gpu_node_cpu_threads": 1}
    monkeypatch.setattr(lab.os, "cpu_count", lambda: 16)
    assert lab.inventory()["all"]["children"]["inference"]["vars"] == {"gpu_node_cpu_threads": 8}


def test_a_host_that_is_not_running_is_named_with_its_console_log():
    ghost = LabHost("ghost", "10.213.7.99", 24, "10.213.7.1")
    with pytest.raises(LabError, match=r"lab host ghost failed to boot; see .*/hosts/ghost/console\.log"):
        lab.wait_ready(ghost, timeout=5)


def bridge_link(address: str) -> dict:
    """An `ip -j addr` entry of a bridge holding one IPv4 address."""
    return {"linkinfo": {"info_kind": "bridge"}, "addr_info": [{"family": "inet", "local": address, "prefixlen": 24}]}


def test_a_foreign_device_with_the_bridge_name_is_a_conflict():
    with pytest.raises(LabError, match="opslab0 exists but is not the lab bridge"):
        network._check_ours(bridge_link("10.0.0.1"), "opslab0", "10.213.7.1/24")
    network._check_ours(bridge_link("10.213.7.1"), "opslab0", "10.213.7.1/24")


def test_input_rules_let_lab_hosts_reach_only_the_wheelhouse_on_the_control_host():
    rules = lab.wanted_rules()
    assert rules["FORWARD"] == network.forward_rules("opslab0")
    assert rules["INPUT"] == [
        ["-i", "opslab0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-i", "opslab0", "-s", "10.213.7.0/24", "-d", "10.213.7.1", "-p", "tcp", "--dport", "8070", "-j", "ACCEPT"],
        ["-i", "opslab0", "-j", "DROP"],
    ]


def test_without_control_services_the_lab_gets_only_replies():
    rules = network.input_rules("br9", "192.0.2.1", "192.0.2.0/24", {})
    assert [rule[-1] for rule in rules] == ["ACCEPT", "DROP"] and "ESTABLISHED,RELATED" in rules[0]
    assert all(rule[:2] == ["-i", "br9"] for rule in rules)


class FakeIptables:
    """`iptables -C/-I/-S/-D` over an in-memory table, to follow what ensure_rules does."""

    def __init__(self, chains: dict[str, list[str]]):
        self.chains = chains

    def __call__(self, *args: str, check: bool = False):
        from types import SimpleNamespace
        op, chain, rest = args[0], args[1], list(args[2:])
        lines = self.chains.setdefault(chain, [])
        if op == "-S":
            return SimpleNamespace(returncode=0, stdout="".join(f"-A {chain} {line}\n" for line in lines))
        if op == "-C":
            return SimpleNamespace(returncode=0 if " ".join(rest) in lines else 1, stdout="")
        if op == "-I":
            lines.insert(int(rest[0]) - 1, " ".join(rest[1:]))
        if op == "-D":
            lines.remove(" ".join(rest))
        return SimpleNamespace(returncode=0, stdout="")


def test_ensure_rules_is_idempotent_and_replaces_a_stale_rule_set(monkeypatch):
    fake = FakeIptables({"INPUT": ["-j unrelated"], "FORWARD": []})
    monkeypatch.setattr(network, "_iptables", fake)
    tag = " ".join(network.RULE_TAG)
    old = network.wanted_rules("opslab0", "10.213.7.1", "10.213.7.0/24", {"old": 9999})
    network.ensure_rules(old)
    wanted = network.wanted_rules("opslab0", "10.213.7.1", "10.213.7.0/24", {"wheelhouse": 8070})
    network.ensure_rules(wanted)
    network.ensure_rules(wanted)
    assert fake.chains["INPUT"] == [f"{' '.join(rule)} {tag}" for rule in wanted["INPUT"]] + ["-j unrelated"]
    assert len(network.tagged_rules()) == 6
    network.remove_rules()
    assert fake.chains == {"INPUT": ["-j unrelated"], "FORWARD": []}


def test_status_json_has_hosts_with_groups_vips_and_inference_endpoints():
    import json

    from lab_tasks.commands.sandbox import status_json
    rows = [lab.HostStatus(h.name, h.address, None, False, lab.host_groups(h.name)) for h in lab.lab_hosts()]
    status = json.loads(status_json(rows))
    assert status["hosts"][-1] == {"name": "infer2", "address": "10.213.7.72", "groups": ["inference"], "ssh": False}
    assert status["vips"] == {"lb": "10.213.7.100", "edge": "10.213.7.200"}
    assert status["endpoints"] == {"inference": "http://10.213.7.200",
                                   "inference_nodes": ["http://10.213.7.71:8000", "http://10.213.7.72:8000"]}
