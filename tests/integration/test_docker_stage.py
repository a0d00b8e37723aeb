"""Stage 8 extras on the sandbox: what the read-only checks cannot prove by themselves.

The restart policy brings the container back after a daemon restart, and the named volume keeps its
data when the container is removed and created again.
"""
from __future__ import annotations

import time

import pytest
import yaml
from conftest import run_lab

from lab_tasks import httpprobe
from lab_tasks.checks.stage8_docker import inspect
from lab_tasks.registry import PROJECT_ROOT
from lab_tasks.remote import ssh_host
from lab_tasks.topology import Inventory, default_inventory_path, ports

DEFAULTS = yaml.safe_load((PROJECT_ROOT / "roles/stage8_docker/defaults/main.yml").read_text())
CONTAINER = DEFAULTS["stage8_docker_container"]
DEADLINE_S = 120


@pytest.fixture(scope="module")
def docker_host(sandbox):
    """(testinfra host, address) of the solved stage's docker host; reset afterwards."""
    run_lab("solve", "stage8", check=True)
    inventory = Inventory(default_inventory_path())
    info = inventory.host(inventory.hosts("docker")[0])
    host = ssh_host(info)
    yield host, info.address
    host.backend.close()
    # Leave the stage prepared, not solved: test_stages' `lab start` expects every task to fail.
    assert run_lab("reset", "stage8").returncode == 0


def wait_healthy(host) -> str:
    """Poll until the container is healthy (or the deadline passes); its last health status."""
    deadline, status = time.monotonic() + DEADLINE_S, "missing"
    while time.monotonic() < deadline:
        status = ((inspect(host, "container", "inspect", CONTAINER).get("State") or {}).get("Health") or {}).get(
            "Status", "missing")
        if status == "healthy":
            break
        time.sleep(1)
    return status


def boots(host) -> list[str]:
    """The container starts recorded in the named volume."""
    return host.run(f"docker exec {CONTAINER} cat {DEFAULTS['stage8_docker_data_mount']}/boots").stdout.splitlines()


def test_container_comes_back_after_a_daemon_restart(docker_host):
    host, address = docker_host
    started = inspect(host, "container", "inspect", CONTAINER)["State"]["StartedAt"]
    assert host.run("systemctl restart docker").rc == 0
    assert wait_healthy(host) == "healthy"
    assert inspect(host, "container", "inspect", CONTAINER)["State"]["StartedAt"] != started
    reply = httpprobe.get(f"http://{address}:{ports()['docker_app']}/")
    status, body = reply.status, reply.body
    assert status == 200 and "opslab web" in body


def test_volume_data_survives_container_recreation(docker_host):
    host, _ = docker_host
    before = boots(host)
    assert before, "the volume holds no boots record"
    assert host.run(f"docker rm --force {CONTAINER}").rc == 0
    assert run_lab("solve", "stage8").returncode == 0
    assert wait_healthy(host) == "healthy"
    after = boots(host)
    assert after[:len(before)] == before and len(after) == len(before) + 1
