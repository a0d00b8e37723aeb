"""The keepalived failover drill: stream requests at the VIP, break the MASTER, measure the outage, restore.

The drill changes state on purpose (it is not a check) and puts it back: the service it stopped runs
again afterwards, and with `nopreempt` the VIP stays on the node that took it over. Once the MASTER is
broken, restoring it runs in a `finally` whatever ends the drill: Ctrl-C, SIGTERM (raised as Interrupted),
an SSH error or a timeout. While it restores, Ctrl-C and SIGTERM wait until it is done.
"""
from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from lab_tasks import httpprobe, progress
from lab_tasks.errors import LabError

METHODS = ("stop-nginx", "stop-keepalived", "stop-host")
TARGET_GROUPS = {"lb": "lb", "inference": "edge"}  # drill target -> the keepalived group it breaks
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
REQUEST_TIMEOUT_S = 0.5
LINK_DOWN_S = 8
LINK_DOWN_UNIT = "opslab-drill-linkdown"
BREAK_LAG_S = {"stop-host": 1.0}  # the link goes down 0.5 s after the break command returns
SETTLE_S = 4.0  # keep streaming this long after the restore: a node that preempts back shows up as a second outage
RESTORE_TIMEOUT_S = LINK_DOWN_S + 30.0
WARMUP_TIMEOUT_S = 5.0
STREAM_WARMUP_TIMEOUT_S = 60.0  # the first streamed completions may wait for an engine's first (compiling) step
LAST_RESULT = "last-failover.json"


class CommandResult(Protocol):
    """What running a command on a lab host returns (testinfra's CommandResult fits)."""

    rc: int
    stdout: str


Run = Callable[[str, str], CommandResult]  # run(host, command)


class Interrupted(BaseException):
    """SIGTERM arrived during a drill (raised like Ctrl-C's KeyboardInterrupt, so `finally` blocks run)."""


@dataclass(frozen=True)
class Sample:
    """One request (one attempt, for streams) of the load: when it was sent (s since the load began) and
    whether it succeeded; streams also record when it ended, the content chunks it got, and which logical
    request it belongs to (attempt 0 is the first try, later ones are retries)."""

    t: float
    ok: bool
    served_by: str = ""
    end: float | None = None
    chunks: int = 0
    request: int = 0
    attempt: int = 0
    error: str = ""
    probe: bool = False  # a one-token request that times the outage, not part of the load


@dataclass(frozen=True)
class Outage:
    """A run of failed requests: first failure until the next success (end None: never recovered)."""

    start: float
    end: float | None

    def length(self, last_t: float) -> float:
        """Seconds without a successful response (until the last sample when it never recovered)."""
        return (self.end if self.end is not None else last_t) - self.start


@dataclass
class DrillResult:
    """Everything one drill measured; `to_json` is what `--json` prints and the state dir keeps."""

    method: str
    vip: str
    from_host: str
    to_host: str | None
    started_at: str
    requests: int
    failed: int
    outage_s: float
    recovered: bool
    outages: list[list[float | None]]
    holders_before: list[str]
    holders_after: list[str]
    served_by: dict[str, int]
    config_sha256: dict[str, str]
    interval_s: float | None
    duration_s: float
    drill: str = field(default="failover")
    target: str = "lb"
    group: str = "lb"
    clients: int = 1
    broken_streams: int = 0
    retries: int = 0
    failed_after_vip_moved: int = 0
    vip_moved_s: float | None = None
    restored: bool = True
    errors: dict[str, int] = field(default_factory=dict)
    timeline: list[list] | None = None  # streams: [sent, ended, chunks, error or "", probe] per attempt
    probes: int = 0
    model: str | None = None
    max_tokens: int | None = None

    def to_json(self) -> str:
        """The result as one JSON object."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def find_outages(samples: list[Sample], t_break: float | None = None) -> list[Outage]:
    """Every run of consecutive failures, from its first failed request to the next success. A request sent
    before the break that failed only failed because of it: its outage starts at the break."""
    found, start = [], None
    for sample in samples:
        if not sample.ok and start is None:
            start = sample.t if t_break is None else max(sample.t, t_break)
        elif sample.ok and start is not None:
            found.append(Outage(start, sample.t))
            start = None
    if start is not None:
        found.append(Outage(start, None))
    return found


def summarize(samples: list[Sample], t_break: float | None = None, t_moved: float | None = None) -> dict:
    """requests, failed, outage_s (the longest outage), recovered, the outage windows and the requests sent
    after the VIP moved that failed."""
    return {"requests": len(samples), "failed": sum(not s.ok for s in samples), "errors": error_kinds(samples),
            **outage_summary(samples, t_break), "failed_after_vip_moved": failed_after(samples, t_moved)}


def error_kinds(samples: list[Sample]) -> dict[str, int]:
    """How many failed samples (attempts) failed in which way ("connection", "http_502", "timeout", ...)."""
    return dict(Counter(s.error or "failed" for s in samples if not s.ok))


def outage_summary(samples: list[Sample], t_break: float | None = None) -> dict:
    """outage_s (the longest outage), recovered and the outage windows of samples in send order."""
    ordered = sorted(samples, key=lambda s: s.t)
    outages = find_outages(ordered, t_break)
    last_t = ordered[-1].t if ordered else 0.0
    longest = max((o.length(last_t) for o in outages), default=0.0)
    return {
        "outage_s": round(longest, 3),
        "recovered": all(o.end is not None for o in outages),
        "outages": [[round(o.start, 3), None if o.end is None else round(o.end, 3)] for o in outages],
    }


def failed_after(samples: list[Sample], t_moved: float | None) -> int:
    """How many requests sent once the VIP had moved failed (every one of them should succeed)."""
    return 0 if t_moved is None else sum(not s.ok and s.t >= t_moved for s in samples)


def summarize_streams(attempts: list[Sample], t_break: float | None = None, t_moved: float | None = None) -> dict:
    """The streaming load's summary. A request is retried (a new attempt) only when it failed before its first
    chunk; a stream that failed after it, or hung in flight at the break ("stalled"), went through the
    balancer that died: it is broken (no proxy can save it), counts as failed, and stays out of the outage,
    which is about new requests finding a balancer. Probes count in the outage only."""
    load = [a for a in attempts if not a.probe]
    final: dict[int, Sample] = {}
    for attempt in sorted(load, key=lambda a: (a.request, a.attempt)):
        final[attempt.request] = attempt
    broken = [a for a in attempts if _broken(a)]
    fresh = [a for a in attempts if not _broken(a)]
    return {"requests": len(final), "failed": sum(not a.ok for a in final.values()),
            "broken_streams": sum(not a.probe for a in broken), "retries": sum(a.attempt > 0 for a in load),
            "errors": error_kinds(load), "probes": sum(a.probe for a in attempts),
            "timeline": [[a.t, a.end, a.chunks, a.error, a.probe] for a in sorted(attempts, key=lambda a: a.t)],
            **outage_summary(fresh, t_break), "failed_after_vip_moved": failed_after(fresh, t_moved)}


def _broken(sample: Sample) -> bool:
    return not sample.ok and (sample.chunks > 0 or sample.error == "stalled")


def vip_holders(run: Run, hosts: list[str], vip: str) -> list[str]:
    """The hosts whose `ip -br addr` lists the VIP."""
    pattern = re.compile(rf"(?<![\d.]){re.escape(vip)}/")
    return [h for h in hosts if pattern.search(run(h, "ip -br addr").stdout)]


def wait_until(predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy (returned) or `timeout_s` passed (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(poll_s)


def single_holder(run: Run, hosts: list[str], vip: str, timeout_s: float) -> str:
    """The one host holding the VIP, waiting up to `timeout_s`; LabError when none or several do."""
    holders: list[str] = []

    def one() -> str | None:
        holders[:] = vip_holders(run, hosts, vip)
        return holders[0] if len(holders) == 1 else None

    found = wait_until(one, timeout_s)
    if not found:
        raise LabError(f"the VIP {vip} is on {len(holders)} hosts ({', '.join(holders) or 'none'}), "
                       "expected exactly one; solve stage 6 (`lab solve stage6`) or fix keepalived")
    return str(found)


def config_fingerprint(run: Run, hosts: list[str]) -> dict[str, str]:
    """sha256 of keepalived.conf on each host ('' when missing): ties a drill result to a config."""
    sums = {}
    for host in hosts:
        out = run(host, f"sha256sum {KEEPALIVED_CONF}").stdout.split()
        sums[host] = out[0] if out else ""
    return sums


def break_commands(method: str, host_interface: str) -> tuple[str, str]:
    """(break, restore) shell commands for a drill method on the MASTER."""
    if method == "stop-nginx":
        return "systemctl stop nginx", "systemctl start nginx"
    if method == "stop-keepalived":
        return "systemctl stop keepalived", "systemctl start keepalived"
    if method == "stop-host":
        # The host drops off the network; a transient unit on the host itself brings the link back, so the
        # host returns even when nothing can reach it. Restoring stops that unit (a drill interrupted in its
        # first half second never takes the link down) and puts the link and the services back.
        script = (f"sleep 0.5; ip link set dev {host_interface} down; sleep {LINK_DOWN_S}; "
                  f"ip link set dev {host_interface} up")
        return (f"systemd-run --quiet --collect --unit {LINK_DOWN_UNIT} sh -c '{script}'",
                f"systemctl stop {LINK_DOWN_UNIT} 2>/dev/null; ip link set dev {host_interface} up; "
                "systemctl is-active --quiet nginx keepalived || systemctl start nginx keepalived")
    raise LabError(f"unknown drill method '{method}'; use one of {', '.join(METHODS)}")


def lab_interface(run: Run, host: str, address: str) -> str:
    """The interface that holds `address` on `host`."""
    fields = run(host, f"ip -o -4 addr show to {address}/32").stdout.split()
    if len(fields) < 2:
        raise LabError(f"{host} has no interface with {address}; check the inventory address")
    return fields[1].split("@")[0]


class Load(Protocol):
    """Requests at the VIP while the drill runs: Stream (HTTP GETs) or chatload.ChatLoad (streamed chats)."""

    def start(self) -> None: ...

    def now(self) -> float: ...

    def succeeded_since(self, t: float, count: int = 1) -> bool: ...

    def mark_break(self, t: float, lag_s: float = 0.0) -> None: ...

    def stop(self, abort: bool = False) -> list[Sample]: ...

    def summary(self, samples: list[Sample], t_break: float | None, t_moved: float | None) -> dict: ...


class LoadThread(threading.Thread):
    """A Load running in its own thread: its samples, their clock (perf_counter, as the bench client's)
    and how it stops: `_stop_event` ends sending, `_abort_event` also cuts what is in flight."""

    join_timeout_s = 10.0

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[Sample] = []
        self._stop_event, self._abort_event = threading.Event(), threading.Event()
        self._t0 = time.perf_counter()

    def now(self) -> float:
        """Seconds since the load began (the samples' clock)."""
        return time.perf_counter() - self._t0

    def succeeded_since(self, t: float, count: int = 1) -> bool:
        """Whether the last `count` finished samples all succeeded and were sent after `t`."""
        tail = self.samples[-count:]
        return len(tail) == count and all(s.ok and s.t >= t for s in tail)

    def mark_break(self, t: float, lag_s: float = 0.0) -> None:
        """The MASTER was broken at `t`, taking effect within `lag_s` (short requests need not know)."""

    def stop(self, abort: bool = False) -> list[Sample]:
        """Stop sending; let requests in flight finish (or cut them with `abort`); return the samples in send order."""
        self._stop_event.set()
        if abort:
            self._abort_event.set()
        if self.is_alive():
            self.join(timeout=self.join_timeout_s)
        return sorted(self.samples, key=lambda s: s.t)


class Stream(LoadThread):
    """Sends GET requests at one URL every `interval_s` (at most `max_requests`) until stopped."""

    def __init__(self, url: str, interval_s: float, max_requests: int):
        super().__init__()
        self.url, self.interval_s, self.max_requests = url, interval_s, max_requests

    def run(self) -> None:
        with httpprobe.client(REQUEST_TIMEOUT_S) as http:
            while not self._stop_event.is_set() and len(self.samples) < self.max_requests:
                sent = self.now()
                reply = httpprobe.get(self.url, http)
                error = "" if reply.ok else (f"http_{reply.status}" if reply.status else reply.error.split(":")[0])
                self.samples.append(Sample(round(sent, 3), reply.ok, reply.served_by, error=error))
                self._stop_event.wait(max(0.0, self.interval_s - (self.now() - sent)))

    def summary(self, samples: list[Sample], t_break: float | None, t_moved: float | None) -> dict:
        """requests, failed, outage_s, ... of the GETs."""
        return summarize(samples, t_break, t_moved)


@dataclass
class Cluster:
    """The VIP group's hosts, how to run commands on them (and reconnect after an error), and the VIP."""

    run: Run
    hosts: list[str]
    addresses: dict[str, str]
    vip: str
    http_port: int
    log: Callable[[str], None] = lambda message: None
    reconnect: Callable[[str], None] = lambda host: None
    ssh_port: int = 22

    def holders(self) -> list[str]:
        """Current VIP holders."""
        return vip_holders(self.run, self.hosts, self.vip)

    def holder_other_than(self, host: str) -> str | None:
        """The single VIP holder among the other hosts (`host` may be unreachable), else None."""
        holders = vip_holders(self.run, [h for h in self.hosts if h != host], self.vip)
        return holders[0] if len(holders) == 1 else None


@dataclass
class Plan:
    """What one drill does: break `from_host` with `method`, for at most `duration_s`, and how to say it."""

    method: str
    duration_s: float
    target: str = "lb"
    interval_s: float | None = None
    clients: int = 1
    model: str | None = None
    max_tokens: int | None = None
    warmup_s: float = WARMUP_TIMEOUT_S  # how long the load may take to get its first success


def run_drill(cluster: Cluster, plan: Plan, load: Load) -> DrillResult:
    """Load the VIP, break the MASTER, wait for recovery, restore the MASTER (always), and measure."""
    from_host = single_holder(cluster.run, cluster.hosts, cluster.vip, timeout_s=20)
    holders_before = cluster.holders()
    breaker, restorer = break_commands(plan.method,
                                       lab_interface(cluster.run, from_host, cluster.addresses[from_host]))
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_break = t_moved = to_host = None
    restored = True
    load.start()
    try:
        if not wait_until(lambda: load.succeeded_since(0.0), plan.warmup_s):
            raise LabError(f"no successful request to the VIP {cluster.vip} before the drill; "
                           f"check the {TARGET_GROUPS[plan.target]} hosts (`lab check ...`)")
        deadline = time.monotonic() + plan.duration_s
        cluster.log(f"MASTER is {from_host}; breaking it with {plan.method}")
        t_break = load.now()
        try:
            cluster.run(from_host, breaker)
            load.mark_break(t_break, load.now() - t_break + BREAK_LAG_S.get(plan.method, 0.0))
            to_host = wait_until(lambda: cluster.holder_other_than(from_host), _left(deadline))
            t_moved = load.now() if to_host else None
            cluster.log(f"VIP now on {to_host or 'no single host'}; waiting for answers")
            wait_until(lambda: load.succeeded_since(t_break, 5), _left(deadline))
        finally:
            restored = restore(cluster, from_host, restorer, plan.method)
        settled = load.now() + SETTLE_S
        wait_until(lambda: load.now() >= settled and load.succeeded_since(settled - 1.0, 5), _left(deadline))
    except BaseException:
        load.stop(abort=True)
        raise
    samples = load.stop()
    if not restored:
        raise LabError(f"the drill could not restore {from_host}; on it run `{restorer}`")
    return DrillResult(
        method=plan.method, vip=cluster.vip, from_host=from_host, to_host=to_host, started_at=started_at,
        holders_before=holders_before, holders_after=cluster.holders(),
        served_by=dict(Counter(s.served_by for s in samples if s.served_by)),
        config_sha256=config_fingerprint(cluster.run, cluster.hosts),
        interval_s=plan.interval_s, duration_s=plan.duration_s, target=plan.target,
        group=TARGET_GROUPS[plan.target], clients=plan.clients, model=plan.model, max_tokens=plan.max_tokens,
        vip_moved_s=None if t_moved is None else round(t_moved - t_break, 3), restored=restored,
        **load.summary(samples, t_break, t_moved))


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def restore(cluster: Cluster, host: str, restorer: str, method: str, timeout_s: float = RESTORE_TIMEOUT_S) -> bool:
    """Undo the break on `host` until its services run again (Ctrl-C and SIGTERM wait meanwhile). Every
    attempt is bounded; an SSH error means reconnect and try again until `timeout_s`. False: not restored."""
    with deferred_signals(lambda: cluster.log(f"restoring {host} first; the drill stops right after")):
        cluster.log(f"restoring {host}")
        deadline = time.monotonic() + timeout_s
        cluster.reconnect(host)  # an interrupt may have cut its connection in the middle of a command
        while time.monotonic() < deadline:
            if method != "stop-host" or reachable(cluster.addresses[host], cluster.ssh_port):
                with contextlib.suppress(Exception):  # an SSH error or a command timeout: reconnect, retry
                    cluster.run(host, restorer)
                    if cluster.run(host, "systemctl is-active --quiet nginx keepalived").rc == 0:
                        cluster.log(f"{host} restored")
                        return True
                cluster.reconnect(host)
            time.sleep(0.5)
        cluster.log(f"could not restore {host} in {timeout_s:.0f}s; on it run `{restorer}`")
        return False


def reachable(address: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to address:port opens (a host whose link is down does not answer)."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises Interrupted in the main thread (as Ctrl-C raises KeyboardInterrupt), so a drill that
    is stopped by its supervisor runs its `finally` and restores the MASTER."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals(notice: Callable[[], None]) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver the first one that came (a restore half
    done is worse than a drill that ends a few seconds later)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def _hold(signum, frame):
        if not pending:
            notice()
        pending.append(signum)

    previous = {sig: signal.signal(sig, _hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def drills_dir() -> Path:
    """Where drill results are kept: <state dir>/drills (state dir as for `lab progress`)."""
    return progress.state_file().parent / "drills"


def save(result: DrillResult, directory: Path | None = None) -> Path:
    """Write drills/failover[-edge]-<time>.json and the last result, overall and of its method:
    drills/last-failover[-edge].json, drills/last-failover[-edge]-<method>.json (`-edge`: the platform's VIP)."""
    directory = directory or drills_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result.started_at.replace(":", "").replace("+0000", "Z")
    kind = _kind(result.group)
    text = result.to_json() + "\n"
    for name in (f"failover{kind}-{stamp}.json", _last_name(result.method, result.group), _last_name(None, result.group)):
        (directory / name).write_text(text)
    return directory / _last_name(None, result.group)


def load_last(directory: Path | None = None, method: str | None = None) -> dict | None:
    """The last saved drill result of the `lb` VIP (of `method`, when given), or None when none ran or it
    is unreadable."""
    return load_last_for("lb", method, directory)


def load_last_for(group: str, method: str | None = None, directory: Path | None = None) -> dict | None:
    """The last saved drill result of the VIP of `group` ("lb" or "edge"), of `method` when given."""
    path = (directory or drills_dir()) / _last_name(method, group)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kind(group: str) -> str:
    return "" if group == "lb" else f"-{group}"


def _last_name(method: str | None, group: str = "lb") -> str:
    kind = _kind(group)
    return f"last-failover{kind}-{method}.json" if method else f"last-failover{kind}.json"
