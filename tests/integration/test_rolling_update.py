"""playbooks/rolling-update.yml under streaming load through the edge VIP: every node is taken out of rotation,
drained, restarted and put back, one at a time, and not one request fails.

The platform is deployed by site.yml when the VIP does not answer yet. The load is bounded in requests and time.
"""
from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest
from conftest import PROJECT_ROOT, healthy

from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import Inventory, default_inventory_path

CLIENTS = 4
RETRIES = 2                  # as the OpenAI clients (and lab_tasks.chatload): only before the response started
RETRY_PAUSE_S = 0.1
MAX_REQUESTS = 2000          # across all clients: the load stops here even if the playbook hangs
PLAYBOOK_TIMEOUT_S = 1200


class StreamingLoad:
    """CLIENTS threads streaming chat completions through the VIP until stopped (or MAX_REQUESTS)."""

    def __init__(self, api: str, model: str) -> None:
        self.api, self.model = api, model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests, self.failures, self.retries = 0, [], 0
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def client(self) -> None:
        body = {"model": self.model, "stream": True, "max_tokens": 24, "temperature": 0,
                "messages": [{"role": "user", "content": "Name three rivers."}]}
        with httpx.Client(trust_env=False, timeout=120) as http:
            while not self.stop.is_set() and self.take_ticket():
                self.record(self.with_retries(http, body))

    def with_retries(self, http: httpx.Client, body: dict) -> str | None:
        """A request that fails before its response starts (a balancer closing an idle keep-alive connection on
        reload) is sent again; a stream that breaks after it started is a failure."""
        for attempt in range(RETRIES + 1):
            failure, started = self.one_stream(http, body)
            if failure is None or started or attempt == RETRIES:
                return failure
            with self.lock:
                self.retries += 1
            time.sleep(RETRY_PAUSE_S)
        return failure

    def take_ticket(self) -> bool:
        with self.lock:
            if self.requests >= MAX_REQUESTS:
                return False
            self.requests += 1
            return True

    def one_stream(self, http: httpx.Client, body: dict) -> tuple[str | None, bool]:
        """(None when the stream completed, else what went wrong; whether the response had started)."""
        started = False
        try:
            with http.stream("POST", f"{self.api}/v1/chat/completions", json=body) as response:
                started = True
                if response.status_code != 200:
                    return f"HTTP {response.status_code}: {response.read()[:200]!r}", started
                lines = [line for line in response.iter_lines() if line.startswith("data:")]
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}", started
        if lines and lines[-1] == "data: [DONE]":
            return None, started
        return f"stream ended without [DONE] after {len(lines)} events", started

    def record(self, failure: str | None) -> None:
        if failure:
            with self.lock:
                self.failures.append(failure)

    def __enter__(self) -> StreamingLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)


def main_pid(address: str) -> str:
    done = subprocess.run(ssh_argv(address, "systemctl show opslab-inference -p MainPID --value"),
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def test_rolling_update_under_streaming_load_fails_no_request(platform):
    pids_before = {name: main_pid(address) for name, address in platform["nodes"].items()}
    with StreamingLoad(platform["api"], platform["model"]) as load:
        time.sleep(3)  # the load is flowing before the first node goes out
        done = subprocess.run([str(PROJECT_ROOT / ".venv/bin/ansible-playbook"), "playbooks/rolling-update.yml"],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S)
        time.sleep(3)  # and still flowing after the last one is back
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert load.requests >= 20, f"only {load.requests} requests ran during the update"
    assert load.failures == [], (f"{len(load.failures)} of {load.requests} failed ({load.retries} retried): "
                                 f"{load.failures[:5]}")
    # Every node really restarted, one at a time, and is back in rotation on every edge host.
    pids_after = {name: main_pid(address) for name, address in platform["nodes"].items()}
    assert all(pids_after[name] not in ("", "0", pids_before[name]) for name in pids_before), (pids_before, pids_after)
    assert done.stdout.count("TASK [Stop the node") == len(platform["nodes"])  # one batch per node
    inventory = Inventory(default_inventory_path())
    for edge in inventory.hosts("edge"):
        address = inventory.host(edge).address
        upstreams = subprocess.run(ssh_argv(address, "cat /etc/nginx/conf.d/upstreams.conf"), capture_output=True,
                                   text=True, timeout=30).stdout
        assert " down;" not in upstreams, upstreams
    assert healthy(platform["api"])
