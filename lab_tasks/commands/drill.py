"""`lab drill failover`: break the VIP holder on purpose, measure the outage, restore (not a check)."""
from __future__ import annotations

import click
import httpx

from lab_tasks import drill as drills
from lab_tasks import httpprobe
from lab_tasks.commands import App, inventory_option, pass_app
from lab_tasks.errors import LabError
from lab_tasks.remote import ssh_host
from lab_tasks.topology import ports

COMMAND_TIMEOUT_S = 15  # one command on a lab host; a host cut off the network must not hang the drill
DEFAULT_DURATION_S = {"lb": 20.0, "inference": 30.0}
EXIT_CODES = {KeyboardInterrupt: 130, drills.Interrupted: 143}


@click.group("drill")
def drill() -> None:
    """Disaster drills that change the lab on purpose and put it back."""


@drill.command("failover")
@click.option("--target", type=click.Choice(tuple(drills.TARGET_GROUPS)), default="lb", show_default=True,
              help="lb: GETs at the stage-6 VIP (lb hosts); inference: streamed chat completions at the "
                   "platform's edge VIP (edge hosts).")
@click.option("--method", type=click.Choice(drills.METHODS), default="stop-nginx", show_default=True,
              help="How to break the current MASTER (stop-host takes its network link down for a few seconds).")
@click.option("--duration", "duration_s", type=click.FloatRange(5, 120), default=None,
              help="Longest time to load the VIP, in seconds.  [default: 20 (lb), 30 (inference)]")
@click.option("--interval", "interval_s", type=click.FloatRange(0.02, 1), default=0.05, show_default=True,
              help="lb: seconds between requests.")
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True,
              help="inference: concurrent streaming clients.")
@click.option("--max-tokens", type=click.IntRange(1, 512), default=16, show_default=True,
              help="inference: tokens per completion (small: many requests start during the drill).")
@click.option("--model", default=None, help="inference: the model to ask for.  [default: the first of /v1/models]")
@click.option("--api-key", envvar="OPSLAB_API_KEY", default=None,
              help="inference: the API key, when the service requires one (env OPSLAB_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print only the result as JSON.")
@inventory_option
@pass_app
@click.pass_context
def failover(ctx: click.Context, app: App, target: str, method: str, duration_s: float | None, interval_s: float,
             clients: int, max_tokens: int, model: str | None, api_key: str | None, as_json: bool) -> None:
    """Load the VIP, break the MASTER, measure the outage, restore the MASTER (also when interrupted), save."""
    group = drills.TARGET_GROUPS[target]
    names = app.inventory.hosts(group)
    if len(names) < 2:
        raise LabError(f"the inventory has {len(names)} host(s) in group '{group}'; a failover drill needs two; "
                       "run `lab sandbox up` or fix the inventory")
    duration_s = duration_s or DEFAULT_DURATION_S[target]
    vip = app.inventory.vip_of(group)
    if target == "inference":
        base_url = app.inventory.endpoints()["inference"]
        model = model or first_model(base_url, api_key)
        plan = drills.Plan(method, duration_s, target, clients=clients, model=model, max_tokens=max_tokens,
                           warmup_s=drills.STREAM_WARMUP_TIMEOUT_S)
    else:
        plan = drills.Plan(method, duration_s, target, interval_s=interval_s)
    runner = SshRunner(app, names)
    cluster = drills.Cluster(run=runner, hosts=names, addresses={n: app.inventory.host(n).address for n in names},
                             vip=vip, http_port=ports()["http"], reconnect=runner.reconnect,
                             log=lambda message: click.echo(f"drill: {message}", err=True))
    try:
        with drills.interruptible():
            result = drills.run_drill(cluster, plan, make_load(plan, cluster, api_key))
    except tuple(EXIT_CODES) as exc:
        click.echo(f"drill: interrupted ({type(exc).__name__}); no result saved", err=True)
        ctx.exit(EXIT_CODES[type(exc)])
    finally:
        runner.close()
    path = drills.save(result)
    click.echo(result.to_json() if as_json else _summary(result, path))
    ctx.exit(0 if result.recovered and result.to_host else 1)


def make_load(plan: drills.Plan, cluster: drills.Cluster, api_key: str | None) -> drills.Load:
    """GETs at the lb VIP, or streamed chat completions at the platform's API."""
    if plan.target == "inference":
        from lab_tasks.chatload import ChatLoad  # imports the inference package: only when asked for

        base_url = httpprobe.url(cluster.vip, cluster.http_port, path="")
        return ChatLoad(base_url, plan.model, plan.clients, plan.max_tokens, plan.warmup_s + plan.duration_s,
                        api_key=api_key)
    max_requests = int((plan.warmup_s + plan.duration_s) / plan.interval_s) + 1
    return drills.Stream(httpprobe.url(cluster.vip, cluster.http_port), plan.interval_s, max_requests)


def first_model(base_url: str, api_key: str | None) -> str:
    """The first model the API lists (LabError saying how to deploy it when the API does not answer)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=5, trust_env=False)
        reply.raise_for_status()
        return str(reply.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise LabError(f"the inference API at {base_url}/v1/models does not answer ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:120]}); deploy the platform (`ansible-playbook site.yml`) "
                       "or pass --api-key") from None


class SshRunner:
    """run(host, command) over one SSH connection per host; each command is bounded in time."""

    def __init__(self, app: App, names: list[str]):
        self.infos = {name: app.inventory.host(name) for name in names}
        self.connections = {name: ssh_host(info) for name, info in self.infos.items()}

    def __call__(self, host: str, command: str) -> drills.CommandResult:
        done = self.connections[host].backend.connection.run(command, warn=True, hide=True, in_stream=False,
                                                             timeout=COMMAND_TIMEOUT_S)
        return Reply(done.exited, done.stdout)

    def reconnect(self, host: str) -> None:
        """Drop the host's connection (it may be cut mid-command); the next command opens a fresh one."""
        self.connections[host].backend.close()
        self.connections[host] = ssh_host(self.infos[host])

    def close(self) -> None:
        """Close every connection."""
        for host in self.connections.values():
            host.backend.close()


class Reply:
    """What one command returned: exit code and output."""

    def __init__(self, rc: int, stdout: str):
        self.rc, self.stdout = rc, stdout


def _summary(result: drills.DrillResult, path) -> str:
    moved = f"{result.from_host} -> {result.to_host}" if result.to_host else f"{result.from_host} -> (no takeover)"
    load = (f"{result.clients} streaming clients, {result.max_tokens} tokens each" if result.target == "inference"
            else f"every {result.interval_s * 1000:.0f} ms")
    lines = [
        f"failover drill ({result.method}) on the {result.group} VIP {result.vip}: {moved}",
        f"  outage   {result.outage_s:.2f} s without a successful response"
        + (f" (VIP moved after {result.vip_moved_s:.2f} s)" if result.vip_moved_s is not None else ""),
        f"  requests {result.requests} sent, {result.failed} failed ({load})",
    ]
    if result.target == "inference":
        lines.append(f"  streams  {result.broken_streams} broken in flight, {result.retries} retries, "
                     f"{result.failed_after_vip_moved} failed after the VIP moved")
    lines += [
        f"  holders  before {', '.join(result.holders_before)}; after {', '.join(result.holders_after) or 'none'}",
        f"  result   {path}",
    ]
    if not result.recovered:
        lines.append("  NOT RECOVERED: requests still failed when the drill ended")
    return "\n".join(lines)
