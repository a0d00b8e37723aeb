"""site.yml: the baseline, the inference platform and every stage's prepare run over the sandbox; the API
answers at the platform VIP; a second run changes nothing."""
from __future__ import annotations

import re
import subprocess

import httpx
import pytest
from conftest import PROJECT_ROOT

from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import Inventory, default_inventory_path, topology

RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_site() -> tuple[subprocess.CompletedProcess, dict[str, tuple[int, int, int]]]:
    """ansible-playbook site.yml; returns the run and per host (changed, unreachable, failed)."""
    done = subprocess.run([str(PROJECT_ROOT / ".venv/bin/ansible-playbook"), "site.yml"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=1800)
    recap = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.finditer(done.stdout)}
    return done, recap


@pytest.fixture(scope="module")
def site_applied(sandbox):
    """site.yml run once over the sandbox: (run, recap)."""
    return run_site()


def test_site_runs_on_every_host(sandbox, site_applied):
    first, recap = site_applied
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr
    assert set(recap) == {host.name for host in sandbox}


def test_site_deploys_the_platform_behind_its_vip(site_applied):
    endpoints = Inventory(default_inventory_path()).endpoints()
    with httpx.Client(trust_env=False, timeout=10) as http:
        nodes = {url: http.get(f"{url}/health").status_code for url in endpoints["inference_nodes"]}
        assert nodes == {url: 200 for url in endpoints["inference_nodes"]}
        assert http.get(f"{endpoints['inference']}/health").status_code == 200
        assert http.get(f"{endpoints['inference']}/v1/models").json()["data"][0]["id"]


def test_second_site_run_changes_nothing(site_applied):
    second, recap = run_site()
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr
    assert {name: counts for name, counts in recap.items() if counts != (0, 0, 0)} == {}


def test_admin_user_logs_in_with_the_lab_key_and_sudoes(sandbox, site_applied):
    admin = topology()["admin_user"]
    host = sandbox[0]
    argv = ssh_argv(host.address, "id -un; sudo -n true && echo sudo-ok; getent hosts learner1")
    argv[argv.index(f"root@{host.address}")] = f"{admin}@{host.address}"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    name, sudo, hosts_line = done.stdout.split("\n")[:3]
    assert (name, sudo) == (admin, "sudo-ok")
    assert hosts_line.split()[0] == topology()["hosts"]["learner1"]["address"]
