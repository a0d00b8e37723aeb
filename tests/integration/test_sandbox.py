"""`lab sandbox`: idempotent up, SSH to every host, status, exec, docker host, and a clean `down`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import run_lab, sandbox_was_up

from lab_tasks import wheelhouse
from lab_tasks.sandbox import hosts as sandbox_hosts
from lab_tasks.sandbox import lab as sandbox_lab
from lab_tasks.sandbox import network
from lab_tasks.sandbox.paths import INVENTORY_FILE, STATE_DIR
from lab_tasks.topology import group_hosts, ports, topology, vip, vips


def pids(hosts) -> dict[str, int | None]:
    return {host.name: sandbox_hosts.read_pid(host) for host in hosts}


def test_up_again_leaves_running_hosts_alone(sandbox):
    before = pids(sandbox)
    done = run_lab("sandbox", "up")
    assert done.returncode == 0, done.stderr
    assert pids(sandbox) == before
    assert all(before.values())


def test_every_host_answers_ssh_with_its_own_name_and_address(sandbox):
    for host in sandbox:
        done = run_lab("sandbox", "exec", host.name, "--", "hostname; ip -4 -o addr show dev host0")
        assert done.returncode == 0, done.stderr
        name, address_line = done.stdout.strip().split("\n", 1)
        assert name == host.name
        assert f"inet {host.address}/{host.prefixlen} " in address_line


def test_status_shows_every_host_up_with_ssh(sandbox):
    done = run_lab("sandbox", "status")
    assert done.returncode == 0, done.stderr
    for host in sandbox:
        row = next(line for line in done.stdout.splitlines() if f" {host.name} " in line)
        assert host.address in row and " ok " in row and str(sandbox_hosts.read_pid(host)) in row


def test_status_json_lists_hosts_vips_and_inference_endpoints(sandbox):
    done = run_lab("sandbox", "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [(h["name"], h["address"], h["ssh"]) for h in status["hosts"]] == [(h.name, h.address, True) for h in sandbox]
    assert {h["name"]: h["groups"] for h in status["hosts"]}["infer1"] == ["inference"]
    assert status["vips"] == vips()
    assert status["endpoints"]["inference"] == f"http://{vip('edge')}"
    assert len(status["endpoints"]["inference_nodes"]) == len(group_hosts("inference"))


def test_exec_returns_the_commands_exit_code(sandbox):
    assert run_lab("sandbox", "exec", "learner1", "--", "exit 7").returncode == 7
    assert run_lab("sandbox", "exec", "learner1", "--", "true").returncode == 0


def test_unknown_host_is_a_one_line_error(sandbox):
    done = run_lab("sandbox", "exec", "nosuchhost", "--", "true")
    assert done.returncode == 2
    assert done.stderr.startswith("Error: unknown lab host 'nosuchhost'")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_inventory_has_the_topology_groups_and_lab_vars(sandbox):
    inventory = yaml.safe_load(INVENTORY_FILE.read_text())["all"]
    assert inventory["vars"]["opslab_vip"] == vip("lb")
    assert inventory["vars"]["opslab_edge_vip"] == vip("edge")
    assert Path(inventory["vars"]["ansible_ssh_private_key_file"]).exists()
    for name, spec in topology()["hosts"].items():
        for group in spec["groups"]:
            assert inventory["children"][group]["hosts"][name] == {"ansible_host": spec["address"]}


def test_forward_rules_keep_traffic_in_the_lab(sandbox):
    bridge = topology()["network"]["bridge"]
    rules = network.tagged_rules("FORWARD")
    assert len(rules) == len(network.forward_rules(bridge))
    assert any(f"-i {bridge} -o {bridge}" in rule and "ACCEPT" in rule for rule in rules)
    route = run_lab("sandbox", "exec", "learner1", "--", "ip route show default")
    assert f"via {topology()['network']['gateway']}" in route.stdout


def test_hosts_have_no_build_identity_and_own_host_keys(sandbox):
    keys = set()
    for name in ("lb1", "lb2"):
        done = run_lab("sandbox", "exec", name, "--",
                       "test -s /etc/machine-id && cat /etc/machine-id; test ! -e /usr/sbin/policy-rc.d && "
                       "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
        assert done.returncode == 0, done.stderr
        keys.add(done.stdout)
    assert len(keys) == 2


def test_docker_host_runs_a_container_from_the_base_tarball(sandbox):
    script = ("set -e; systemctl start docker; "
              "docker import /opt/opslab/images/debian-bookworm-rootfs.tar opslab-test/base:1 >/dev/null; "
              "docker run --rm --memory 64m opslab-test/base:1 cat /etc/debian_version; "
              "docker rmi opslab-test/base:1 >/dev/null")
    done = run_lab("sandbox", "exec", "docker1", "--", script, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().startswith("12.")


def test_up_restarts_a_host_whose_nspawn_was_killed(sandbox):
    """SIGKILL leaves the container running orphaned (pitfall 4); `up` must clear it and boot afresh."""
    host = sandbox_lab.lab_host("app2")
    pid = sandbox_hosts.read_pid(host)
    os.kill(pid, signal.SIGKILL)
    sandbox_hosts.wait_stopped(host, pid, timeout=10)
    assert sandbox_hosts.read_pid(host) is None
    done = run_lab("sandbox", "up")
    assert done.returncode == 0, done.stderr
    assert sandbox_hosts.read_pid(host) not in (None, pid)
    assert run_lab("sandbox", "exec", "app2", "--", "true").returncode == 0


def leftovers() -> list[str]:
    """Everything `down` must have removed, described; empty when clean."""
    names = [host.name for host in sandbox_lab.lab_hosts()]
    found = [f"process {p}" for p in nspawn_processes(names)]
    found += [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(STATE_DIR) in line]
    found += [f"link {link}" for link in links() if link == topology()["network"]["bridge"] or link.startswith("vb-")]
    found += network.tagged_rules()
    found += [str(p) for p in (STATE_DIR, INVENTORY_FILE) if p.exists()]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob("*/**/opslab") if p.is_dir()]
    found += [str(p) for p in Path("/run/systemd/nspawn/propagate").glob("*") if p.name in names]
    found += [f"wheelhouse server {pid}" for pid in [wheelhouse.running_pid()] if pid]
    return found


def nspawn_processes(names: list[str]) -> list[int]:
    """PIDs of systemd-nspawn processes running a lab host."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"systemd-nspawn") and any(f"--machine={n}".encode() in cmdline for n in names):
            found.append(int(proc.name))
    return found


def links() -> list[str]:
    done = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]


@pytest.mark.sandbox_last
def test_down_leaves_nothing_behind(sandbox):
    """A full cycle at the end of the session: down is clean, down again is harmless, up works again."""
    # The wheelhouse server listens on the bridge's address: down stops it with the bridge.
    wheelhouse.serve(topology()["network"]["gateway"], ports()["wheelhouse"])
    assert wheelhouse.running_pid()
    assert run_lab("sandbox", "down").returncode == 0
    assert leftovers() == []
    assert run_lab("sandbox", "down").returncode == 0
    assert run_lab("sandbox", "up").returncode == 0
    assert run_lab("sandbox", "exec", "learner1", "--", "true").returncode == 0
    assert run_lab("sandbox", "down").returncode == 0
    assert leftovers() == []
    if sandbox_was_up():
        assert run_lab("sandbox", "up").returncode == 0  # give the shared sandbox back
