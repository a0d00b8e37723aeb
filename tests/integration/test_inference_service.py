"""The inference_service role on the sandbox's inference nodes (gpu_node first, CPU fallback, one thread each).

Deploys from the control host's offline wheelhouse, then checks what a user relies on: a second run changes
nothing, the API answers, the unit runs hardened as its own user and drains on SIGTERM, the engine is rebuilt
only when what goes into it changes, the optional API key, and the node firewall (edge hosts and the control
host in, every other lab host refused). Every loop is bounded in count and time.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import PROJECT_ROOT

from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import Inventory, default_inventory_path, ports, topology

RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
UNIT = "opslab-inference"
ENGINE = "/var/lib/opslab-inference/engine"
PLAYBOOK = """\
- name: Inference nodes
  hosts: inference
  gather_facts: false
  vars_files:
    - {ports}
  roles:
    - role: gpu_node
      vars:
        gpu_node_cpu_threads: 1     # two nodes share the sandbox's two cores
    - role: inference_service
"""


def run_platform(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """gpu_node + inference_service on the inference group; (run, recap by host: (changed, unreachable, failed))."""
    playbook = tmp_path / "inference.yml"
    playbook.write_text(PLAYBOOK.format(ports=PROJECT_ROOT / "lab_tasks/ports.yml"))
    done = subprocess.run([str(PROJECT_ROOT / ".venv/bin/ansible-playbook"), str(playbook), *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1500)
    return done, {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.finditer(done.stdout)}


def on_host(address: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_argv(address, command), capture_output=True, text=True, timeout=timeout)


def address_of(name: str) -> str:
    return topology()["hosts"][name]["address"]


@pytest.fixture(scope="module")
def nodes(sandbox, tmp_path_factory) -> dict[str, str]:
    """Node name -> base URL, after a first run of the roles."""
    inventory = Inventory(default_inventory_path())
    names = inventory.hosts("inference")
    assert len(names) >= 2, f"the inventory's `inference` group has {names}"
    done, recap = run_platform(tmp_path_factory.mktemp("platform"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return {name: f"http://{inventory.host(name).address}:{ports()['inference']}" for name in names}


def completion(base: str, headers: dict | None = None, max_tokens: int = 4) -> httpx.Response:
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{base}/v1/completions", json=body, headers=headers or {}, timeout=60, trust_env=False)


def wait_healthy(base: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{base}/health did not answer 200 within {seconds} s")


def test_second_run_changes_nothing(nodes, tmp_path):
    done, recap = run_platform(tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert {name: recap[name] for name in nodes} == {name: (0, 0, 0) for name in nodes}


def test_every_node_answers_health_and_completions(nodes):
    for base in nodes.values():
        assert httpx.get(f"{base}/health", timeout=5, trust_env=False).status_code == 200
        answer = completion(base)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"].strip()


def test_venv_holds_the_server_not_the_lab_tooling(nodes):
    done = on_host(address_of(next(iter(nodes))), "/opt/opslab-inference/venv/bin/pip list --format=json")
    installed = {p["name"].lower(): p["version"] for p in json.loads(done.stdout)}
    assert installed["torch"].endswith("+cpu") and "opslab" in installed
    assert "ansible-core" not in installed and "matplotlib" not in installed


def test_unit_runs_hardened_as_its_own_user(nodes):
    props = ("User", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "Restart", "KillSignal",
             "LimitNOFILE", "CPUQuotaPerSecUSec", "TimeoutStopUSec", "MainPID", "EnvironmentFiles")
    for name in nodes:
        done = on_host(address_of(name), f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        shown = dict(line.split("=", 1) for line in done.stdout.splitlines())
        assert (shown["User"], shown["NoNewPrivileges"], shown["ProtectSystem"], shown["ProtectHome"],
                shown["PrivateTmp"], shown["Restart"]) == ("opslab-inference", "yes", "strict", "yes", "yes",
                                                           "on-failure")
        assert shown["KillSignal"] == "15" and shown["LimitNOFILE"] == "65536"
        assert shown["CPUQuotaPerSecUSec"] == "1s"  # one thread per node in the sandbox
        assert shown["TimeoutStopUSec"] == "45s"    # drain 30 s + 15
        owner = on_host(address_of(name), f"ps -o user= -p {shown['MainPID']}; "
                                          "stat -c '%a %U' /etc/opslab-inference/server.env")
        assert owner.stdout.split() == ["opslab-inference", "600", "root"], owner.stdout


def test_sigterm_drains_streams_before_the_service_stops(nodes):
    name, base = sorted(nodes.items())[-1]
    address, outcome, streaming = address_of(name), {"lines": []}, threading.Event()

    def stream() -> None:
        body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 256, "ignore_eos": True,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120, trust_env=False) as response:
            outcome["status"] = response.status_code
            for line in response.iter_lines():
                if line.startswith("data:"):
                    outcome["lines"].append(line)
                    streaming.set()

    client = threading.Thread(target=stream)
    client.start()
    assert streaming.wait(timeout=60), "the stream did not start"
    stopper = subprocess.Popen(ssh_argv(address, f"systemctl stop {UNIT}"))
    try:
        health = []
        for _ in range(50):  # at most ~10 s
            try:
                health.append(httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code)
            except httpx.HTTPError:
                health.append(None)
            if 503 in health or not client.is_alive():
                break
            time.sleep(0.2)
        client.join(timeout=120)
        stopper.wait(timeout=120)
        result = on_host(address, f"systemctl show {UNIT} -p Result -p ExecMainStatus")
    finally:
        on_host(address, f"systemctl start {UNIT}")
        wait_healthy(base)
    assert 503 in health, f"/health while draining: {health}"
    assert outcome["status"] == 200 and outcome["lines"][-1] == "data: [DONE]", outcome["lines"][-3:]
    assert len(outcome["lines"]) > 200, f"{len(outcome['lines'])} events: the stream was cut short"
    assert "Result=success" in result.stdout and "ExecMainStatus=0" in result.stdout, result.stdout


def test_engine_is_rebuilt_only_when_its_inputs_change(nodes, tmp_path):
    name = sorted(nodes)[-1]
    address = address_of(name)
    state = f"cat {ENGINE}/build-key; stat -c %Y {ENGINE}/config.json"
    before = on_host(address, state).stdout.split()
    run_platform(tmp_path, "--limit", name)
    after = on_host(address, state).stdout.split()
    # Rebuilt only when the key changed (an edit of our sources changes our wheel, hence the key).
    assert after == before or after[0] != before[0], (before, after)
    try:
        done, recap = run_platform(tmp_path, "--limit", name, "-e", '{"inference_service_build_args": {"max-num-seqs": 8}}')
        assert done.returncode == 0, done.stdout[-3000:]
        config = json.loads(on_host(address, f"cat {ENGINE}/config.json").stdout)
        assert config["runtime"]["max_num_seqs"] == 8
        assert "Build the engine on the node" in done.stdout and recap[name][0] > 0
    finally:
        done, _ = run_platform(tmp_path, "--limit", name)
    assert done.returncode == 0, done.stdout[-3000:]
    assert json.loads(on_host(address, f"cat {ENGINE}/config.json").stdout)["runtime"]["max_num_seqs"] != 8


def test_api_key_is_required_when_enabled(nodes, tmp_path):
    name = sorted(nodes)[-1]
    base, key_file = nodes[name], tmp_path / "api-key"
    try:
        done, _ = run_platform(tmp_path, "--limit", name, "-e", json.dumps(
            {"inference_service_api_key_enabled": True, "inference_service_api_key_file": str(key_file)}))
        assert done.returncode == 0, done.stdout[-3000:]
        key = key_file.read_text().strip()
        assert len(key) == 40 and oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert completion(base).status_code == 401
        assert completion(base, {"Authorization": f"Bearer {key}"}).status_code == 200
        assert key not in done.stdout
    finally:
        done, _ = run_platform(tmp_path, "--limit", name)
    assert done.returncode == 0 and completion(base).status_code == 200


def curl_from(host: str, base: str) -> subprocess.CompletedProcess:
    return on_host(address_of(host), f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 {base}/health")


def test_firewall_admits_the_edge_and_refuses_other_lab_hosts(nodes):
    inventory = Inventory(default_inventory_path())
    edges = inventory.hosts("edge")
    assert edges, "no edge hosts in the inventory"
    for base in nodes.values():
        assert curl_from(edges[0], base).stdout == "200"
        for outsider in ("learner1", "app1"):
            refused = curl_from(outsider, base)
            assert "200" not in refused.stdout, (outsider, refused.stdout)
            assert refused.returncode in (7, 28), refused.stderr  # curl: refused (TCP reset) or timed out


def test_firewall_table_is_checked_and_loaded_at_boot(nodes):
    address = address_of(next(iter(nodes)))
    done = on_host(address, "nft -c -f /etc/nftables.d/opslab-inference.nft && echo checked; "
                            "systemctl is-enabled opslab-inference-firewall; nft list table inet opslab_inference")
    assert done.stdout.startswith("checked\nenabled\n"), done.stdout + done.stderr
    assert f"tcp dport {ports()['inference']} counter" in done.stdout and "reject with tcp reset" in done.stdout


def test_wheelhouse_answers_on_the_lab_address_only(nodes):
    gateway, port = topology()["network"]["gateway"], ports()["wheelhouse"]
    from_node = on_host(address_of(next(iter(nodes))),
                        f"curl -sS --max-time 5 http://{gateway}:{port}/cpu/manifest.json")
    assert json.loads(from_node.stdout)["variant"] == "cpu"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2, trust_env=False)
