"""Inventory loading: any Ansible inventory format, SSH parameters, and one-line errors."""
import pytest

from lab_tasks import topology
from lab_tasks.errors import LabError
from lab_tasks.topology import Inventory, default_inventory_path

YAML_INVENTORY = """
all:
  vars: {opslab_vip: 10.213.7.100, ansible_user: root, ansible_ssh_private_key_file: ~/key}
  children:
    learner:
      hosts:
        learner1: {ansible_host: 10.213.7.41}
    lb:
      hosts:
        lb1: {ansible_host: 10.213.7.11, ansible_port: 2200, ansible_user: admin}
"""
INI_INVENTORY = "[learner]\nlearner1 ansible_host=192.0.2.41\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_inventory_gives_hosts_groups_and_ssh_parameters(tmp_path):
    inventory = Inventory(write(tmp_path, "hosts.yml", YAML_INVENTORY))
    assert inventory.hosts("learner") == ["learner1"]
    assert inventory.hosts("learner:lb") == ["learner1", "lb1"]
    learner = inventory.host("learner1")
    assert (learner.address, learner.user, learner.port) == ("10.213.7.41", "root", 22)
    assert learner.key_file.endswith("/key") and not learner.key_file.startswith("~")
    lb = inventory.host("lb1")
    assert (lb.user, lb.port) == ("admin", 2200)
    assert inventory.vip == "10.213.7.100"


def test_ini_inventory_and_topology_vip_fallback(tmp_path):
    inventory = Inventory(write(tmp_path, "hosts.ini", INI_INVENTORY))
    assert inventory.host("learner1").address == "192.0.2.41"
    assert inventory.vip == topology.topology()["network"]["vip"]


def test_missing_inventory_names_the_fix(tmp_path):
    with pytest.raises(LabError, match="not found; run `lab sandbox up` or pass -i"):
        Inventory(tmp_path / "nope.yml")


def test_broken_inventory_names_the_problem(tmp_path):
    with pytest.raises(LabError, match=r"is broken \(.*YAML"):
        Inventory(write(tmp_path, "hosts.yml", "all: [::\n  bad"))


def test_unknown_host_is_a_lab_error(tmp_path):
    inventory = Inventory(write(tmp_path, "hosts.yml", YAML_INVENTORY))
    with pytest.raises(LabError, match="host 'ghost' is not in inventory"):
        inventory.host("ghost")


def test_default_inventory_comes_from_env_then_ansible_cfg(monkeypatch):
    monkeypatch.delenv("OPSLAB_INVENTORY", raising=False)
    assert str(default_inventory_path()).endswith("inventory/sandbox/hosts.yml")
    monkeypatch.setenv("OPSLAB_INVENTORY", "/elsewhere/hosts.yml")
    assert str(default_inventory_path()) == "/elsewhere/hosts.yml"


def test_ports_come_from_ports_yml():
    assert topology.ports()["ssh"] == 22
