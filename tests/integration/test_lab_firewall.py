"""The control host's INPUT filter: a lab host reaches the wheelhouse port on the bridge address and nothing
else of the control host, tried with real connections from lab hosts to real listeners."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import run_lab

from lab_tasks.sandbox import lab, network
from lab_tasks.topology import ports, topology

GATEWAY = topology()["network"]["gateway"]
CONNECT_TIMEOUT_S = 3


@contextlib.contextmanager
def listener(bind: str, port: int, directory: Path) -> Iterator[subprocess.Popen]:
    """`python -m http.server` on bind:port serving `directory`, stopped afterwards; its log is its stderr."""
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", bind,
                               "--directory", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not answers(GATEWAY if bind == "0.0.0.0" else bind, port):
            assert server.poll() is None and time.monotonic() < deadline, "the test listener did not start"
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


def answers(address: str, port: int) -> bool:
    """Whether an HTTP GET from the control host itself gets a response."""
    try:
        return httpx.get(f"http://{address}:{port}/", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def port_taken(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return True
    return False


def curl_from(host: str, url: str) -> subprocess.CompletedProcess:
    """curl `url` on a lab host; stdout is the HTTP status (000 when no connection)."""
    return run_lab("sandbox", "exec", host, "--",
                   f"curl -sS -o /dev/null -w '%{{http_code}}' --connect-timeout {CONNECT_TIMEOUT_S} {url}",
                   timeout=60)


def control_host_addresses() -> list[str]:
    """The control host's bridge address and its own primary address (lab hosts route it via the bridge)."""
    route = subprocess.run(["ip", "-o", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout.split()
    primary = route[route.index("src") + 1] if "src" in route else None
    return [GATEWAY] + ([primary] if primary and primary != GATEWAY else [])


def test_input_rules_are_in_place_in_order(sandbox):
    rules = network.tagged_rules("INPUT")
    assert len(rules) == len(lab.wanted_rules()["INPUT"]), rules
    assert "--ctstate RELATED,ESTABLISHED" in rules[0] and rules[0].endswith("-j ACCEPT")
    assert f"--dport {ports()['wheelhouse']}" in rules[1] and f"-d {GATEWAY}/32" in rules[1]
    assert rules[-1] == f"-A INPUT -i {topology()['network']['bridge']} -m comment --comment opslab -j DROP"


def test_a_service_on_all_addresses_is_closed_to_lab_hosts(sandbox, tmp_path):
    port = free_port()
    with listener("0.0.0.0", port, tmp_path) as server:
        for address in control_host_addresses():
            assert answers(address, port), f"the listener does not answer on {address} from the control host"
            done = curl_from("learner1", f"http://{address}:{port}/")
            assert done.returncode != 0 and done.stdout.strip() == "000", (address, done.stdout, done.stderr)
    assert lab.lab_host("learner1").address not in server.stderr.read()  # http.server logs each client


def test_the_wheelhouse_port_answers_lab_hosts(sandbox, tmp_path):
    wheelhouse = ports()["wheelhouse"]
    if port_taken(GATEWAY, wheelhouse):  # the capstone's wheelhouse server already runs: ask it
        done = curl_from("infer1", f"http://{GATEWAY}:{wheelhouse}/")
        assert done.returncode == 0 and done.stdout.strip() != "000", done.stderr
        return
    (tmp_path / "probe.txt").write_text("wheelhouse probe\n")
    with listener(GATEWAY, wheelhouse, tmp_path):
        for host in ("infer1", "learner1"):
            done = run_lab("sandbox", "exec", host, "--",
                           f"curl -sS --connect-timeout {CONNECT_TIMEOUT_S} http://{GATEWAY}:{wheelhouse}/probe.txt",
                           timeout=60)
            assert (done.returncode, done.stdout) == (0, "wheelhouse probe\n"), done.stderr


def test_lab_hosts_still_reach_each_other(sandbox, tmp_path):
    done = run_lab("sandbox", "exec", "learner1", "--",
                   f"ping -c 1 -W 2 {lab.lab_host('infer1').address} >/dev/null && echo reached", timeout=60)
    assert done.stdout.strip() == "reached", done.stderr
