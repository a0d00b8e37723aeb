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
    assert inventory.vip == topology.vip("lb")
    assert inventory.edge_vip == topology.vip("edge")


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


def test_each_vip_names_its_group_and_inventory_variable():
    assert topology.vips() == {"lb": "10.213.7.100", "edge": "10.213.7.200"}
    assert (topology.vip_variable("lb"), topology.vip_variable("edge")) == ("opslab_vip", "opslab_edge_vip")
    with pytest.raises(LabError, match="group 'app' has no VIP; groups with one: lb, edge"):
        topology.vip("app")


def test_the_platform_has_hosts_of_its_own():
    assert topology.group_hosts("edge") == ["edge1", "edge2"]
    assert topology.group_hosts("inference") == ["infer1", "infer2"]
    stage_hosts = {name for group in ("lb", "app", "db", "learner", "docker") for name in topology.group_hosts(group)}
    assert not stage_hosts & {"edge1", "edge2", "infer1", "infer2"}
    addresses = [spec["address"] for spec in topology.topology()["hosts"].values()]
    assert len(set(addresses)) == len(addresses)
    assert not set(topology.vips().values()) & set(addresses)


PLATFORM_INVENTORY = """
all:
  vars: {opslab_edge_vip: 192.0.2.200}
  children:
    edge:
      hosts:
        e1: {ansible_host: 192.0.2.61}
    inference:
      hosts:
        n1: {ansible_host: 192.0.2.71}
        n2: {ansible_host: 192.0.2.72}
"""


def test_inference_endpoints_from_an_inventory_and_from_the_topology(tmp_path):
    inventory = Inventory(write(tmp_path, "hosts.yml", PLATFORM_INVENTORY))
    assert inventory.edge_vip == "192.0.2.200"
    assert inventory.vip == topology.vip("lb")  # no opslab_vip here: the topology's
    assert inventory.endpoints() == {"inference": "http://192.0.2.200",
                                     "inference_nodes": ["http://192.0.2.71:8000", "http://192.0.2.72:8000"]}
    assert topology.endpoints() == {"inference": "http://10.213.7.200",
                                    "inference_nodes": ["http://10.213.7.71:8000", "http://10.213.7.72:8000"]}


def test_wheelhouse_and_inference_ports():
    assert (topology.ports()["wheelhouse"], topology.ports()["inference"]) == (8070, 8000)


def test_the_vm_inventory_example_has_every_topology_host_group_and_vip():
    example = Inventory(topology.PROJECT_ROOT / "inventory" / "vmlab.example.yml")
    for name, spec in topology.topology()["hosts"].items():
        for group in spec["groups"]:
            assert name in example.hosts(group), (name, group)
    variables = example.host_vars(example.hosts("all")[0])
    assert {topology.vip_variable(group) for group in topology.vips()} <= variables.keys()
    assert example.edge_vip != example.vip
