"""The gpu_node role on the sandbox's inference nodes.

CPU branch for real: the nodes have no GPU, so the role falls back to CPU with one line per node, sets the
CPU facts and changes nothing on a second run. GPU branch with fakes: the test puts an `lspci` and an
`nvidia-smi` that answer like a two-GPU H100 host in a directory first on PATH for that run only
(`gpu_node_tool_path`), a /dev/nvidia0 and a stand-in nvidia-persistenced unit on one node, and removes
them afterwards; the driver check passes for the CUDA build the fake driver supports and fails for a newer one.
"""
from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import Inventory, default_inventory_path

RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
FAKE_DIR = "/run/opslab-fake-gpu"
FAKE_DRIVER = "570.124.06"
FAKE_LSPCI = """\
#!/bin/sh
# lspci -nn -d 10de: on a host with two H100s (each GPU has an audio function that is not a GPU)
[ "$*" = "-nn -d 10de:" ] || exit 1
echo '17:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)'
echo '17:00.1 Audio device [0403]: NVIDIA Corporation Device [10de:22a3] (rev a1)'
echo '2a:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)'
"""
FAKE_SMI = f"""\
#!/bin/sh
# nvidia-smi answering only the query the role must send
[ "$*" = "--query-gpu=name,memory.total,driver_version,persistence_mode --format=csv,noheader,nounits" ] || exit 9
echo 'NVIDIA H100 80GB HBM3, 81559, {FAKE_DRIVER}, Enabled'
echo 'NVIDIA H100 80GB HBM3, 81559, {FAKE_DRIVER}, Enabled'
"""
# Stands in for the driver's persistence daemon, which the role must enable on a GPU node.
FAKE_PERSISTENCED_UNIT = """\
[Unit]
Description=stand-in nvidia-persistenced (gpu_node test)
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""
PLAYBOOK = """\
- name: Detect GPUs
  hosts: "{{ target }}"
  gather_facts: false
  roles:
    - role: gpu_node
  post_tasks:
    - name: Hand the facts to the test
      ansible.builtin.copy:
        content: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars) | map('dict2items')
                   | map('selectattr', 'key', 'match', 'gpu_node_') | map('items2dict'))) | to_json }}"
        dest: "{{ facts_out }}"
        mode: "0644"
      delegate_to: localhost
      run_once: true
      changed_when: false
"""


def nodes() -> list[tuple[str, str]]:
    """(name, address) of every inference node."""
    inventory = Inventory(default_inventory_path())
    return [(name, inventory.host(name).address) for name in inventory.hosts("inference")]


def on_node(address: str, script: str) -> subprocess.CompletedProcess:
    """Run a shell script on a lab host (sent on stdin: ssh would re-split it as arguments)."""
    return subprocess.run(ssh_argv(address, "sh -eu"), input=script, capture_output=True, text=True, timeout=60)


def run_role(tmp_path: Path, target: str, **extra_vars) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """The gpu_node role on `target`; (run, facts by host, recap by host: (changed, unreachable, failed))."""
    playbook, facts_out = tmp_path / "gpu_node.yml", tmp_path / "facts.json"
    playbook.write_text(PLAYBOOK)
    facts_out.unlink(missing_ok=True)
    variables = {"target": target, "facts_out": str(facts_out), **extra_vars}
    done = subprocess.run([str(PROJECT_ROOT / ".venv/bin/ansible-playbook"), str(playbook),
                           "-e", json.dumps(variables)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600)
    recap = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.finditer(done.stdout)}
    facts = json.loads(facts_out.read_text()) if facts_out.exists() else {}
    return done, facts, recap


@pytest.fixture(scope="module")
def inference_nodes(sandbox) -> list[tuple[str, str]]:
    found = nodes()
    assert len(found) >= 2, f"the inventory's `inference` group has {found}; lab_tasks/topology.yml names two"
    return found


def test_cpu_branch_falls_back_with_one_line_for_all_nodes(inference_nodes, tmp_path):
    done, facts, recap = run_role(tmp_path, "inference", gpu_node_cpu_threads=1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # One message for the whole play, naming every node (the YAML callback folds it over lines).
    assert done.stdout.count("CPU fallback on") == 1, done.stdout[-3000:]
    message = " ".join(done.stdout.split("CPU fallback on", 1)[1].split("\n\n", 1)[0].split())
    for name, _ in inference_nodes:
        assert f"{name} (no NVIDIA GPU found; 1 thread)" in message, message
        assert facts[name]["gpu_node_device"] == "cpu"
        assert (facts[name]["gpu_node_gpu_count"], facts[name]["gpu_node_gpu_memory_mib"]) == (0, 0)
        assert facts[name]["gpu_node_threads"] == 1
        assert facts[name]["gpu_node_driver_supported"] is False
        assert facts[name]["gpu_node_secure_boot"] in ("enabled", "disabled", "not-efi", "unknown")
    # 0 (the role's default; the sandbox inventory sets 1): every CPU the node may use.
    _, facts, _ = run_role(tmp_path, inference_nodes[0][0], gpu_node_cpu_threads=0)
    cpus = on_node(inference_nodes[0][1], "nproc").stdout.strip()
    assert facts[inference_nodes[0][0]]["gpu_node_threads"] == int(cpus)


def test_cpu_branch_second_run_changes_nothing(inference_nodes, tmp_path):
    run_role(tmp_path, "inference", gpu_node_cpu_threads=1)
    done, _, recap = run_role(tmp_path, "inference", gpu_node_cpu_threads=1)
    assert done.returncode == 0, done.stdout[-3000:]
    assert {name: recap[name] for name, _ in inference_nodes} == {name: (0, 0, 0) for name, _ in inference_nodes}


@pytest.fixture
def fake_gpu_node(inference_nodes):
    """One node with fake GPU tools, /dev/nvidia0 and a stand-in persistence daemon; removed afterwards."""
    name, address = inference_nodes[-1]
    setup = textwrap.dedent(f"""\
        mkdir -p {FAKE_DIR}
        cat > {FAKE_DIR}/lspci <<'EOF'\n{FAKE_LSPCI}EOF
        cat > {FAKE_DIR}/nvidia-smi <<'EOF'\n{FAKE_SMI}EOF
        chmod 0755 {FAKE_DIR}/lspci {FAKE_DIR}/nvidia-smi
        touch /dev/nvidia0
        cat > /run/systemd/system/nvidia-persistenced.service <<'EOF'\n{FAKE_PERSISTENCED_UNIT}EOF
        systemctl daemon-reload
        """)
    done = on_node(address, setup)
    assert done.returncode == 0, done.stderr
    yield name, address
    cleanup = on_node(address, f"systemctl disable --now nvidia-persistenced 2>/dev/null || true\n"
                               f"rm -rf {FAKE_DIR} /dev/nvidia0 /run/systemd/system/nvidia-persistenced.service; "
                               f"systemctl daemon-reload")
    assert cleanup.returncode == 0, cleanup.stderr


def test_gpu_branch_with_fake_tools_sets_cuda_facts(fake_gpu_node, tmp_path):
    name, address = fake_gpu_node
    done, facts, _ = run_role(tmp_path, name, gpu_node_tool_path=FAKE_DIR, gpu_node_torch_cuda_version="12.8")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    found = facts[name]
    assert found["gpu_node_device"] == "cuda"
    assert found["gpu_node_gpu_count"] == 2
    assert found["gpu_node_gpu_memory_mib"] == 2 * 81559
    assert found["gpu_node_pci_gpus"] and len(found["gpu_node_pci_gpus"]) == 2  # the audio function is no GPU
    assert found["gpu_node_device_nodes"] == ["/dev/nvidia0"]
    assert (found["gpu_node_driver_version"], found["gpu_node_driver_supported"]) == (FAKE_DRIVER, True)
    assert f"{name}: 2 x NVIDIA H100 80GB HBM3" in done.stdout
    enabled = on_node(address, "systemctl is-enabled nvidia-persistenced; systemctl is-active nvidia-persistenced")
    assert enabled.stdout.split() == ["enabled", "active"], enabled.stdout + enabled.stderr


def test_gpu_branch_refuses_a_driver_too_old_for_the_torch_build(fake_gpu_node, tmp_path):
    name, _ = fake_gpu_node
    # CUDA 12.9 needs driver 575.51.03; the fake driver is 570.
    done, _, recap = run_role(tmp_path, name, gpu_node_tool_path=FAKE_DIR, gpu_node_torch_cuda_version="12.9")
    assert done.returncode != 0 and recap[name][2] == 1, done.stdout[-3000:]
    assert f"NVIDIA driver {FAKE_DRIVER} cannot run the torch build for CUDA 12.9" in done.stdout
    assert "needs a driver >= 575.51.03" in done.stdout


def test_fake_tools_are_gone_after_the_gpu_runs(inference_nodes, tmp_path):
    name, address = inference_nodes[-1]
    left = on_node(address, f"ls -d {FAKE_DIR} /dev/nvidia0 2>/dev/null || true")
    assert left.stdout.strip() == ""
    _, facts, _ = run_role(tmp_path, name, gpu_node_cpu_threads=1)
    assert facts[name]["gpu_node_device"] == "cpu"
