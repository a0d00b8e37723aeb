"""The sandbox for integration tests: ONE lab for the whole session.

The `sandbox` fixture brings the lab up once and takes it down at the end only if it was not up when the
session started (helpers keep a shared sandbox up while they develop). With CI=true a missing
prerequisite fails the run; elsewhere it skips with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from lab_tasks.sandbox import hosts as sandbox_hosts
from lab_tasks.sandbox import lab as sandbox_lab
from lab_tasks.topology import Inventory, default_inventory_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LAB = PROJECT_ROOT / ".venv" / "bin" / "lab"
_session = {"was_up": False}


def run_lab(*args: str, check: bool = False, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run `.venv/bin/lab ARGS` from the project root; output captured as text.

    With `check`, a non-zero exit fails the caller with the tail of both output streams."""
    done = subprocess.run([str(LAB), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, (
        f"lab {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def missing_prerequisite() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "the sandbox needs root"
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run `make install`)"
    if not LAB.exists():
        return f"{LAB} is missing (run `make install`)"
    return None


def sandbox_running() -> bool:
    """Whether any lab host runs now."""
    return any(sandbox_hosts.read_pid(host) for host in sandbox_lab.lab_hosts())


def sandbox_was_up() -> bool:
    """Whether the sandbox was already up when this session's fixture first ran."""
    return _session["was_up"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here `sandbox`; tests marked `sandbox_last` run at the very end of the session."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.sandbox)
    items.sort(key=lambda item: item.get_closest_marker("sandbox_last") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox_last: runs after every other test (it cycles the sandbox)")


@pytest.fixture(scope="session")
def sandbox() -> list[sandbox_hosts.LabHost]:
    """The lab hosts, up and answering SSH; yields the topology's hosts."""
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"sandbox prerequisite missing in CI: {reason}")
        pytest.skip(reason)
    _session["was_up"] = sandbox_running()
    done = run_lab("sandbox", "up")
    assert done.returncode == 0, f"lab sandbox up failed:\n{done.stdout}\n{done.stderr}"
    yield sandbox_lab.lab_hosts()
    if not _session["was_up"]:
        run_lab("sandbox", "down", check=True)


def healthy(base: str) -> bool:
    """Whether `base`/health answers 200 (our server, or the edge VIP in front of it)."""
    try:
        return httpx.get(f"{base}/health", timeout=3, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def platform(sandbox) -> dict:
    """The inference platform answering at its VIP, deployed by site.yml on the edge and inference hosts when it
    does not answer yet: {"api": base URL at the VIP, "model": served model name, "nodes": {name: address},
    "node_urls": [each node's base URL]}."""
    inventory = Inventory(default_inventory_path())
    endpoints = inventory.endpoints()
    api = endpoints["inference"]
    if not healthy(api):
        done = subprocess.run([str(PROJECT_ROOT / ".venv/bin/ansible-playbook"), "site.yml", "--limit",
                               "edge:inference"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=2400)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    deadline = time.monotonic() + 60
    while not healthy(api) and time.monotonic() < deadline:
        time.sleep(1)
    assert healthy(api), f"{api}/health does not answer 200 after site.yml"
    with httpx.Client(trust_env=False, timeout=10) as http:
        model = http.get(f"{api}/v1/models").json()["data"][0]["id"]
    return {"api": api, "model": model, "node_urls": endpoints["inference_nodes"],
            "nodes": {name: inventory.host(name).address for name in inventory.hosts("inference")}}
