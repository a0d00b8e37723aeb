"""Stage 5 behaviour the read-only checks cannot show: with one backend stopped, every request through
lb1 still succeeds (max_fails + proxy_next_upstream), and the backend rejoins once it is back."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import run_lab

from lab_tasks import httpprobe
from lab_tasks.remote import ssh_host
from lab_tasks.topology import Inventory, default_inventory_path, ports

REQUESTS = 20


@pytest.fixture(scope="module")
def lab_hosts(sandbox):
    """(inventory, lb url) with stage 5 in its reference state."""
    run_lab("solve", "stage5", check=True)
    inventory = Inventory(default_inventory_path())
    lb = inventory.hosts("lb")[0]
    return inventory, httpprobe.url(inventory.host(lb).address, ports()["http"])


def spread(url: str, count: int = REQUESTS) -> Counter:
    """Backend name (or status/error) of each of `count` requests."""
    with httpprobe.client() as http:
        return Counter(reply.backend or reply.describe() for reply in (httpprobe.get(url, http) for _ in range(count)))


def systemctl(inventory: Inventory, host: str, action: str) -> None:
    connection = ssh_host(inventory.host(host))
    try:
        assert connection.run(f"systemctl {action} nginx").rc == 0
    finally:
        connection.backend.close()


def test_requests_survive_a_stopped_backend(lab_hosts):
    inventory, url = lab_hosts
    first, second = inventory.hosts("app")[:2]
    assert set(spread(url)) == {first, second}
    systemctl(inventory, second, "stop")
    try:
        answers = spread(url)
    finally:
        systemctl(inventory, second, "start")
    assert answers == Counter({first: REQUESTS})


def test_a_backend_rejoins_after_it_restarts(lab_hosts):
    inventory, url = lab_hosts
    deadline = time.monotonic() + 30  # fail_timeout (10 s) plus slack
    seen: Counter = Counter()
    while time.monotonic() < deadline and len(seen) < 2:
        seen = spread(url, 6)
        time.sleep(1)
    assert set(seen) == set(inventory.hosts("app")[:2])
