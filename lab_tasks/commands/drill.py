"""`lab drill failover`: break the VIP holder on purpose, measure the outage, restore (not a check)."""
from __future__ import annotations

import click

from lab_tasks import drill as drills
from lab_tasks.commands import App, inventory_option, pass_app
from lab_tasks.remote import ssh_host
from lab_tasks.topology import ports

LB_GROUP = "lb"


@click.group("drill")
def drill() -> None:
    """Disaster drills that change the lab on purpose and put it back."""


@drill.command("failover")
@click.option("--method", type=click.Choice(drills.METHODS), default="stop-nginx", show_default=True,
              help="How to break the current MASTER (stop-host takes its network link down for a few seconds).")
@click.option("--duration", "duration_s", type=click.FloatRange(5, 120), default=20.0, show_default=True,
              help="Longest time to stream requests at the VIP, in seconds.")
@click.option("--interval", "interval_s", type=click.FloatRange(0.02, 1), default=0.05, show_default=True,
              help="Seconds between requests.")
@click.option("--json", "as_json", is_flag=True, help="Print only the result as JSON.")
@inventory_option
@pass_app
@click.pass_context
def failover(ctx: click.Context, app: App, method: str, duration_s: float, interval_s: float,
             as_json: bool) -> None:
    """Stream requests at the VIP, break the MASTER, measure the outage, restore, save the result."""
    runner = SshRunner(app, app.inventory.hosts(LB_GROUP))
    cluster = _cluster(app, runner, log=lambda message: click.echo(f"drill: {message}", err=True))
    try:
        result = drills.run_drill(cluster, method, duration_s, interval_s)
    finally:
        runner.close()
    path = drills.save(result)
    click.echo(result.to_json() if as_json else _summary(result, path))
    ctx.exit(0 if result.recovered and result.to_host else 1)


class SshRunner:
    """run(host, command) over one SSH connection per host."""

    def __init__(self, app: App, names: list[str]):
        self.connections = {name: ssh_host(app.inventory.host(name)) for name in names}

    def __call__(self, host: str, command: str):
        return self.connections[host].run(command)

    def close(self) -> None:
        """Close every connection."""
        for host in self.connections.values():
            host.backend.close()


def _cluster(app: App, runner: SshRunner, log) -> drills.Cluster:
    inventory = app.inventory
    hosts = list(runner.connections)
    return drills.Cluster(run=runner, hosts=hosts,
                          addresses={name: inventory.host(name).address for name in hosts},
                          vip=inventory.vip, http_port=ports()["http"], log=log)


def _summary(result: drills.DrillResult, path) -> str:
    moved = f"{result.from_host} -> {result.to_host}" if result.to_host else f"{result.from_host} -> (no takeover)"
    lines = [
        f"failover drill ({result.method}) on VIP {result.vip}: {moved}",
        f"  outage   {result.outage_s:.2f} s without a successful response",
        f"  requests {result.requests} sent, {result.failed} failed (every {result.interval_s * 1000:.0f} ms)",
        f"  holders  before {', '.join(result.holders_before)}; after {', '.join(result.holders_after) or 'none'}",
        f"  result   {path}",
    ]
    if not result.recovered:
        lines.append("  NOT RECOVERED: requests still failed when the drill ended")
    return "\n".join(lines)
