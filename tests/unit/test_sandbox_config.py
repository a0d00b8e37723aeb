"""Sandbox pieces that need no root: image hash, package list, nspawn command lines, inventory."""
from pathlib import Path

from lab_tasks.sandbox import image, lab
from lab_tasks.sandbox.hosts import DOCKER_BASE_IN_HOST, nspawn_argv
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
