"""The keepalived failover drill: stream requests at the VIP, break the MASTER, measure the outage, restore.

The drill changes state on purpose (it is not a check) and puts it back: the service it stopped runs
again afterwards, and with `nopreempt` the VIP stays on the node that took it over.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from lab_tasks import httpprobe, progress
from lab_tasks.errors import LabError

METHODS = ("stop-nginx", "stop-keepalived", "stop-host")
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
REQUEST_TIMEOUT_S = 0.5
LINK_DOWN_S = 8
SETTLE_S = 4.0  # keep streaming this long after the restore: a node that preempts back shows up as a second outage
LAST_RESULT = "last-failover.json"


class CommandResult(Protocol):
    """What running a command on a lab host returns (testinfra's CommandResult fits)."""

    rc: int
    stdout: str


Run = Callable[[str, str], CommandResult]  # run(host, command)


@dataclass(frozen=True)
class Sample:
    """One request of the stream: when it was sent (s since the stream began) and whether it got a 2xx."""

    t: float
    ok: bool
    served_by: str = ""


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
    interval_s: float
    duration_s: float
    drill: str = field(default="failover")

    def to_json(self) -> str:
        """The result as one JSON object."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def find_outages(samples: list[Sample]) -> list[Outage]:
    """Every run of consecutive failures, from its first failed request to the next success."""
    found, start = [], None
    for sample in samples:
        if not sample.ok and start is None:
            start = sample.t
        elif sample.ok and start is not None:
            found.append(Outage(start, sample.t))
            start = None
    if start is not None:
        found.append(Outage(start, None))
    return found


def summarize(samples: list[Sample]) -> dict:
    """requests, failed, outage_s (the longest outage), recovered and the outage windows."""
    outages = find_outages(samples)
    last_t = samples[-1].t if samples else 0.0
    longest = max((o.length(last_t) for o in outages), default=0.0)
    return {
        "requests": len(samples),
        "failed": sum(not s.ok for s in samples),
        "outage_s": round(longest, 3),
        "recovered": all(o.end is not None for o in outages),
        "outages": [[round(o.start, 3), None if o.end is None else round(o.end, 3)] for o in outages],
    }


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
        # The host drops off the network; a transient unit on the host itself brings the link back.
        script = (f"sleep 0.5; ip link set dev {host_interface} down; sleep {LINK_DOWN_S}; "
                  f"ip link set dev {host_interface} up")
        return (f"systemd-run --quiet --collect --unit opslab-drill-linkdown sh -c '{script}'",
                "systemctl is-active --quiet nginx keepalived || systemctl start nginx keepalived")
    raise LabError(f"unknown drill method '{method}'; use one of {', '.join(METHODS)}")


def lab_interface(run: Run, host: str, address: str) -> str:
    """The interface that holds `address` on `host`."""
    fields = run(host, f"ip -o -4 addr show to {address}/32").stdout.split()
    if len(fields) < 2:
        raise LabError(f"{host} has no interface with {address}; check the inventory address")
    return fields[1].split("@")[0]


class Stream(threading.Thread):
    """Sends GET requests at one URL every `interval_s` (at most `max_requests`) until stopped."""

    def __init__(self, url: str, interval_s: float, max_requests: int):
        super().__init__(daemon=True)
        self.url, self.interval_s, self.max_requests = url, interval_s, max_requests
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        with httpprobe.client(REQUEST_TIMEOUT_S) as http:
            while not self._stop_event.is_set() and len(self.samples) < self.max_requests:
                sent = time.monotonic()
                reply = httpprobe.get(self.url, http)
                self.samples.append(Sample(round(sent - self._t0, 3), reply.ok, reply.served_by))
                self._stop_event.wait(max(0.0, self.interval_s - (time.monotonic() - sent)))

    def now(self) -> float:
        """Seconds since the stream began (the samples' clock)."""
        return time.monotonic() - self._t0

    def succeeded_since(self, t: float, count: int = 1) -> bool:
        """Whether the last `count` samples all succeeded and were sent after `t`."""
        tail = self.samples[-count:]
        return len(tail) == count and all(s.ok and s.t >= t for s in tail)

    def stop(self) -> list[Sample]:
        """Stop streaming and return the samples."""
        self._stop_event.set()
        self.join()
        return list(self.samples)


@dataclass
class Cluster:
    """The lb hosts, how to run commands on them, and the VIP."""

    run: Run
    hosts: list[str]
    addresses: dict[str, str]
    vip: str
    http_port: int
    log: Callable[[str], None] = lambda message: None

    def holders(self) -> list[str]:
        """Current VIP holders."""
        return vip_holders(self.run, self.hosts, self.vip)

    def holder_other_than(self, host: str) -> str | None:
        """The single VIP holder among the other hosts (`host` may be unreachable), else None."""
        holders = vip_holders(self.run, [h for h in self.hosts if h != host], self.vip)
        return holders[0] if len(holders) == 1 else None


def run_drill(cluster: Cluster, method: str, duration_s: float, interval_s: float = 0.05) -> DrillResult:
    """Stream at the VIP, break the MASTER with `method`, wait for recovery, restore, and measure."""
    from_host = single_holder(cluster.run, cluster.hosts, cluster.vip, timeout_s=20)
    holders_before = cluster.holders()
    breaker, restorer = break_commands(method, lab_interface(cluster.run, from_host, cluster.addresses[from_host]))
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stream = Stream(httpprobe.url(cluster.vip, cluster.http_port), interval_s, int(duration_s / interval_s) + 1)
    stream.start()
    deadline = time.monotonic() + duration_s
    if not wait_until(lambda: stream.succeeded_since(0.0), 5):
        stream.stop()
        raise LabError(f"no successful request to http://{cluster.vip}/ before the drill; "
                       "check nginx on the lb hosts (`lab check stage6`)")
    cluster.log(f"MASTER is {from_host}; breaking it with {method}")
    t_break = stream.now()
    cluster.run(from_host, breaker)
    to_host = wait_until(lambda: cluster.holder_other_than(from_host), _left(deadline))
    cluster.log(f"VIP now on {to_host or 'no single host'}; waiting for answers")
    wait_until(lambda: stream.succeeded_since(t_break, 5), _left(deadline))
    _restore(cluster, from_host, restorer, method, deadline)
    settled = stream.now() + SETTLE_S
    wait_until(lambda: stream.now() >= settled and stream.succeeded_since(settled - 1.0, 5), _left(deadline))
    samples = stream.stop()
    return DrillResult(
        method=method, vip=cluster.vip, from_host=from_host, to_host=to_host, started_at=started_at,
        holders_before=holders_before, holders_after=cluster.holders(),
        served_by=dict(Counter(s.served_by for s in samples if s.served_by)),
        config_sha256=config_fingerprint(cluster.run, cluster.hosts),
        interval_s=interval_s, duration_s=duration_s, **summarize(samples))


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _restore(cluster: Cluster, host: str, restorer: str, method: str, deadline: float) -> None:
    """Undo the break on `host` and wait until its track script would pass again."""
    if method == "stop-host":
        time.sleep(LINK_DOWN_S)  # the host's own timer brings the link back; nothing reaches it before
        wait_until(lambda: _answers(cluster, host), max(10.0, _left(deadline)))
    cluster.log(f"restoring {host}")
    cluster.run(host, restorer)
    wait_until(lambda: cluster.run(host, "systemctl is-active --quiet nginx keepalived").rc == 0, 10)


def _answers(cluster: Cluster, host: str) -> bool:
    try:
        return cluster.run(host, "true").rc == 0
    except Exception:  # noqa: BLE001 - an SSH error just means "not yet"
        return False


def drills_dir() -> Path:
    """Where drill results are kept: <state dir>/drills (state dir as for `lab progress`)."""
    return progress.state_file().parent / "drills"


def save(result: DrillResult, directory: Path | None = None) -> Path:
    """Write drills/failover-<time>.json, drills/last-failover.json and drills/last-failover-<method>.json."""
    directory = directory or drills_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result.started_at.replace(":", "").replace("+0000", "Z")
    text = result.to_json() + "\n"
    for name in (f"failover-{stamp}.json", _last_name(result.method), _last_name(None)):
        (directory / name).write_text(text)
    return directory / _last_name(None)


def load_last(directory: Path | None = None, method: str | None = None) -> dict | None:
    """The last saved drill result (of `method`, when given), or None when none ran or it is unreadable."""
    path = (directory or drills_dir()) / _last_name(method)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _last_name(method: str | None) -> str:
    return f"last-failover-{method}.json" if method else LAST_RESULT
