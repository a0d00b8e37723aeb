"""CLI errors against the real sandbox: one `Error:` line on stderr, exit 2, no traceback."""
from __future__ import annotations

import pytest
import yaml
from conftest import run_lab

from lab_tasks.topology import default_inventory_path, topology

# An address on the lab bridge's subnet that no lab host uses: nothing answers there.
UNUSED_LAB_ADDRESS = topology()["network"]["subnet"].rsplit(".", 1)[0] + ".99"


def assert_one_line_error(done, *fragments):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def inventory_with_lost_learner(sandbox, tmp_path):
    """The sandbox inventory, with learner1 moved to an address where nothing answers."""
    data = yaml.safe_load(default_inventory_path().read_text())
    data["all"]["children"]["learner"]["hosts"]["learner1"]["ansible_host"] = UNUSED_LAB_ADDRESS
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_on_an_unreachable_host(inventory_with_lost_learner):
    done = run_lab("check", "stage1", "-i", str(inventory_with_lost_learner), "--json")
    assert_one_line_error(done, "host learner1", UNUSED_LAB_ADDRESS, "unreachable", "lab sandbox up")
    assert done.stdout == ""


def test_start_on_an_unreachable_host_names_the_task_and_host(inventory_with_lost_learner):
    done = run_lab("start", "stage1", "-i", str(inventory_with_lost_learner))
    assert_one_line_error(done, "ansible-playbook prepare of stage1 failed", "on learner1 (unreachable)",
                          "lab sandbox up")


def test_check_an_unknown_host(sandbox):
    assert_one_line_error(run_lab("check", "stage1", "--host", "ghost9"), "host 'ghost9' is not in inventory")


def test_check_with_a_missing_key(sandbox, tmp_path):
    data = yaml.safe_load(default_inventory_path().read_text())
    data["all"]["vars"]["ansible_ssh_private_key_file"] = str(tmp_path / "no-such-key")
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    assert_one_line_error(run_lab("check", "stage1", "-i", str(path)), "host learner1", "unreachable")


def test_unknown_stage_with_the_sandbox_up(sandbox):
    assert_one_line_error(run_lab("check", "stage42"), "unknown stage 'stage42'")
