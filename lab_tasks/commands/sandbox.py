"""`lab sandbox ...`: the one-box lab of systemd-nspawn hosts (root only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from lab_tasks.errors import LabError
from lab_tasks.sandbox import lab
from lab_tasks.sandbox.image import ensure_image
from lab_tasks.sandbox.paths import INVENTORY_FILE
from lab_tasks.sandbox.ssh import ssh_argv
from lab_tasks.topology import endpoints, ports, vips


@click.group("sandbox")
def sandbox() -> None:
    """Boot the lab hosts as systemd-nspawn containers on this machine (needs root)."""


def status_table(rows: list[lab.HostStatus]) -> Table:
    """One row per host: name, address, groups, nspawn PID, SSH."""
    table = Table("host", "address", "groups", "pid", "ssh")
    for row in rows:
        ssh = "[green]ok[/green]" if row.ssh else "[red]no answer[/red]"
        table.add_row(row.name, row.address, ",".join(row.groups), str(row.pid or "stopped"), ssh)
    return table


def where_things_answer() -> str:
    """The bridge, the VIPs, the inventory, the inference API and the lab's ports, for people looking for them."""
    net = lab.network_config()
    vip_list = "  ".join(f"VIP {address} ({group} group)" for group, address in vips().items())
    port_list = ", ".join(f"{name} {number}" for name, number in ports().items())
    return (f"bridge {net['bridge']} {net['gateway']}  {vip_list}  inventory {INVENTORY_FILE}\n"
            f"inference API {endpoints()['inference']}/v1 (once the capstone is deployed)\n"
            f"ports: {port_list}")


def status_json(rows: list[lab.HostStatus]) -> str:
    """Hosts, VIPs by group and the inference endpoints, as one JSON object."""
    hosts = [{"name": row.name, "address": row.address, "groups": list(row.groups), "ssh": row.ssh} for row in rows]
    return json.dumps({"hosts": hosts, "vips": vips(), "endpoints": endpoints()}, indent=2)


@sandbox.command("up")
def up() -> None:
    """Build the image if needed and boot every lab host (running ones are left alone)."""
    console = Console(highlight=False, soft_wrap=True)
    started = time.monotonic()
    rows = lab.up(say=console.print)
    console.print(status_table(rows))
    console.print(where_things_answer(), markup=False)
    console.print(f"lab up in {time.monotonic() - started:.1f}s")


@sandbox.command("down")
def down() -> None:
    """Stop every lab host and remove overlays, bridge, firewall rules and state."""
    started = time.monotonic()
    lab.down()
    click.echo(f"lab down in {time.monotonic() - started:.1f}s: nothing left behind")


@sandbox.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print hosts, VIPs and inference endpoints as JSON.")
def status(as_json: bool) -> None:
    """Show each lab host, its nspawn PID, address and whether SSH answers."""
    lab.require_root()
    rows = lab.status()
    if as_json:
        click.echo(status_json(rows))
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(status_table(rows))
    if any(row.pid for row in rows):
        console.print(where_things_answer(), markup=False)
    else:
        click.echo("the sandbox is down; start it with `lab sandbox up`")


@sandbox.command("ssh")
@click.argument("host")
def ssh(host: str) -> None:
    """Open an interactive root shell on HOST with the lab key."""
    lab.require_root()
    argv = ssh_argv(lab.running_host(host).address, tty=True)
    os.execvp(argv[0], argv)


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on HOST (through its shell, as ssh does) and exit with its exit code: exec HOST -- CMD."""
    lab.require_root()
    argv = ssh_argv(lab.running_host(host).address, " ".join(command))
    sys.exit(subprocess.run(argv).returncode)


@sandbox.command("image")
@click.option("--rebuild", is_flag=True, help="Build again even when the cached image is current.")
def image(rebuild: bool) -> None:
    """Build the golden image once (cached by the hash of its package list and recipe)."""
    lab.require_root()
    if rebuild and any(row.pid for row in lab.status()):
        raise LabError("the sandbox is up on the current image; run `lab sandbox down` first")
    click.echo(f"image: {ensure_image(rebuild=rebuild).path}")
