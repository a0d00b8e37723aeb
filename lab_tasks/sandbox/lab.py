"""The whole sandbox lab, from lab_tasks/topology.yml: up, down, status, and the generated inventory."""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab_tasks import wheelhouse
from lab_tasks.errors import LabError
from lab_tasks.sandbox import hosts as hostmod
from lab_tasks.sandbox import network
from lab_tasks.sandbox.hosts import LabHost
from lab_tasks.sandbox.image import Image, ensure_image
from lab_tasks.sandbox.paths import HOSTS_DIR, INVENTORY_FILE, SSH_KEY, STATE_DIR
from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import INFERENCE_GROUP, group_hosts, ports, topology, vip_variable, vips

BOOT_TIMEOUT_S = 180
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn/propagate")
SETTLE_SCRIPT = (  # wait for boot to finish, then restart units that failed by chance (pitfall 2)
    "systemctl is-system-running --wait >/dev/null; "
    "failed=$(systemctl list-units --state=failed --plain --no-legend | awk '{print $1}'); "
    'if [ -n "$failed" ]; then systemctl reset-failed; systemctl restart $failed || true; fi; '
    "echo $failed"
)


@dataclass(frozen=True)
class HostStatus:
    """What `lab sandbox status` reports for one host."""

    name: str
    address: str
    pid: int | None
    ssh: bool
    groups: tuple[str, ...] = ()


def network_config() -> dict:
    """The topology's network section."""
    return topology()["network"]


def control_services() -> dict[str, int]:
    """The control-host services lab hosts may reach (topology `control_services`, ports from ports.yml)."""
    return {name: ports()[name] for name in network_config().get("control_services", [])}


def wanted_rules() -> dict[str, list[list[str]]]:
    """The tagged iptables rules of this topology, by chain."""
    net = network_config()
    return network.wanted_rules(net["bridge"], net["gateway"], net["subnet"], control_services())


def lab_hosts() -> list[LabHost]:
    """Every lab host of the topology."""
    net = network_config()
    prefixlen = ipaddress.ip_network(net["subnet"]).prefixlen
    return [LabHost(name, spec["address"], prefixlen, net["gateway"], tuple(spec.get("features", ())))
            for name, spec in topology()["hosts"].items()]


def lab_host(name: str) -> LabHost:
    """The lab host called name, or a LabError listing the known ones."""
    for host in lab_hosts():
        if host.name == name:
            return host
    known = ", ".join(h.name for h in lab_hosts())
    raise LabError(f"unknown lab host '{name}'; known hosts: {known}")


def require_root() -> None:
    """The sandbox mounts, bridges and boots containers: root only, with systemd-nspawn installed."""
    if os.geteuid() != 0:
        raise LabError("the sandbox needs root; run it as root (e.g. `sudo .venv/bin/lab sandbox up`)")
    for tool in ("systemd-nspawn", "ip", "iptables", "ssh"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed; run `make install`")


def up(say=print) -> list[HostStatus]:
    """Bring every lab host up (running ones are left alone) and write the inventory."""
    require_root()
    image = ensure_image()
    net = network_config()
    network.ensure_bridge(net["bridge"], net["gateway"], net["subnet"])
    network.ensure_rules(wanted_rules())
    hosts = lab_hosts()
    booted = [boot(host, image, net["bridge"], say) for host in hosts]
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        for host, restarted in zip(hosts, pool.map(wait_ready, hosts, booted)):
            if restarted:
                say(f"{host.name}: restarted units that failed at boot: {restarted}")
    write_inventory()
    return [HostStatus(host.name, host.address, hostmod.read_pid(host), True, host_groups(host.name))
            for host in hosts]


def boot(host: LabHost, image: Image, bridge: str, say) -> bool:
    """Start a host unless it runs (then False); a stopped host made on another image starts afresh."""
    recorded = hostmod.recorded_image(host)
    if hostmod.read_pid(host):
        if recorded != str(image.path):
            say(f"{host.name}: runs on an older image; `lab sandbox down` then `up` to refresh it")
        return False
    if recorded not in (None, str(image.path)):
        say(f"{host.name}: the image changed; starting it afresh")
        hostmod.remove(host)
    hostmod.clear_leftovers(host)
    hostmod.mount_overlay(host, image)
    hostmod.write_identity(host)
    hostmod.start(host, image, bridge)
    return True


def wait_ready(host: LabHost, booted: bool = True, timeout: float = BOOT_TIMEOUT_S) -> str:
    """Wait until the host answers SSH; a just-booted one also settles. Returns the units restarted."""
    command = SETTLE_SCRIPT if booted else "true"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hostmod.read_pid(host) is None:
            raise LabError(f"lab host {host.name} failed to boot; see {host.log}")
        try:
            done = subprocess.run(ssh_argv(host.address, command), capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        if done.returncode == 0:
            return done.stdout.strip()
        time.sleep(0.5)
    raise LabError(f"lab host {host.name} did not finish booting in {timeout:.0f}s; see {host.log}")


def known_hosts() -> list[LabHost]:
    """The topology's hosts plus any host state left from an older topology."""
    hosts = lab_hosts()
    names = {h.name for h in hosts}
    leftovers = sorted(p.name for p in HOSTS_DIR.glob("*") if p.name not in names) if HOSTS_DIR.is_dir() else []
    return hosts + [LabHost(name, "", 0, "") for name in leftovers]


def down() -> None:
    """Stop every host, then remove overlays, cgroups, state, the rules, the bridge and the inventory, and stop
    the wheelhouse server (it listens on the bridge's address, which goes with the bridge)."""
    require_root()
    wheelhouse.stop()
    hosts = known_hosts()
    pids = [hostmod.signal_stop(host) for host in hosts]
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(hostmod.wait_stopped, hosts, pids))
    for host in hosts:
        hostmod.remove(host)
        shutil.rmtree(NSPAWN_RUN_DIR / host.name, ignore_errors=True)
    network.remove_rules()
    network.remove_bridge(network_config()["bridge"])
    INVENTORY_FILE.unlink(missing_ok=True)
    for directory in (HOSTS_DIR, STATE_DIR):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def ssh_ok(host: LabHost) -> bool:
    """Whether the host accepts an SSH login with the lab key."""
    try:
        return subprocess.run(ssh_argv(host.address, "true"), capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def status() -> list[HostStatus]:
    """Each host's nspawn PID and whether SSH answers."""
    hosts = lab_hosts()
    pids = [hostmod.read_pid(host) for host in hosts]
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        reachable = list(pool.map(lambda h, pid: bool(pid) and ssh_ok(h), hosts, pids))
    return [HostStatus(h.name, h.address, pid, ok, host_groups(h.name)) for h, pid, ok in zip(hosts, pids, reachable)]


def host_groups(name: str) -> tuple[str, ...]:
    """The topology groups of a host."""
    return tuple(topology()["hosts"][name]["groups"])


def running_host(name: str) -> LabHost:
    """A lab host that is up, or a LabError saying how to bring it up."""
    host = lab_host(name)
    if hostmod.read_pid(host) is None:
        raise LabError(f"lab host {name} is not running; run `lab sandbox up`")
    return host


def inventory() -> dict:
    """The Ansible inventory of the sandbox: topology groups, addresses, the lab key, lab-wide vars."""
    net = network_config()
    groups: dict[str, dict] = {}
    for name, spec in topology()["hosts"].items():
        for group in spec["groups"]:
            groups.setdefault(group, {"hosts": {}})["hosts"][name] = {"ansible_host": spec["address"]}
    for group, group_vars in sandbox_group_vars().items():
        if group in groups:
            groups[group]["vars"] = group_vars
    lab_vars = {"ansible_user": "root", "ansible_ssh_private_key_file": str(SSH_KEY),
                **{vip_variable(group): address for group, address in vips().items()},
                "opslab_network": net["subnet"], "opslab_gateway": net["gateway"],
                "opslab_domain": topology()["domain"], "opslab_admin_user": topology()["admin_user"]}
    return {"all": {"vars": lab_vars, "children": groups}}


def sandbox_group_vars() -> dict[str, dict]:
    """Group variables only the sandbox needs: its inference nodes share this machine's cores, so each
    engine gets its share of them instead of every core (roles/gpu_node's default)."""
    nodes = len(group_hosts(INFERENCE_GROUP))
    return {INFERENCE_GROUP: {"gpu_node_cpu_threads": max(1, (os.cpu_count() or 1) // max(1, nodes))}}


def write_inventory() -> None:
    """Write inventory/sandbox/hosts.yml (generated; ignored by git)."""
    INVENTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by `lab sandbox up` from lab_tasks/topology.yml; removed by `lab sandbox down`.\n"
    INVENTORY_FILE.write_text(header + yaml.safe_dump(inventory(), sort_keys=False))
