"""Sandbox pieces that need no root: image hash, package list, nspawn command lines, inventory."""
from pathlib import Path

import pytest

from lab_tasks.errors import LabError
from lab_tasks.sandbox import image, lab, network
from lab_tasks.sandbox.hosts import DOCKER_BASE_IN_HOST, LabHost, nspawn_argv
from lab_tasks.topology import topology

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
    assert inventory["vars"]["opslab_vip"] == topology()["network"]["vip"]
    assert inventory["vars"]["ansible_user"] == "root"
    assert inventory["children"]["lb"]["hosts"]["lb1"] == {"ansible_host": topology()["hosts"]["lb1"]["address"]}
    grouped = {name for group in inventory["children"].values() for name in group["hosts"]}
    assert grouped == set(topology()["hosts"])


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
