"""Checks for stage 6: a VIP shared by the lb hosts with keepalived VRRP.

Read-only: `ip -br addr`, keepalived.conf, the notify log and systemd state on the lb hosts, one
request through the VIP, and the result file `lab drill failover` left on the control host.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from lab_tasks import drill, httpprobe
from lab_tasks.checks import Lab, Verdict, expect

MAX_OUTAGE_S = 3.0
DRILL_METHOD = "stop-nginx"  # the task: nginx dies on the VIP holder
CONF = drill.KEEPALIVED_CONF


@dataclass
class Block:
    """A keepalived.conf line (name and arguments) and, for `name ... {`, the lines inside."""

    name: str
    args: list[str]
    children: list[Block] = field(default_factory=list)

    def find(self, name: str) -> list[Block]:
        """Direct children called `name`."""
        return [c for c in self.children if c.name == name]

    def first_arg(self, name: str) -> str:
        """First argument of the first child called `name`, or ''."""
        found = self.find(name)
        return found[0].args[0] if found and found[0].args else ""


def parse_keepalived(text: str) -> Block:
    """keepalived.conf as a tree of lines; comments (# and !) dropped, braces may share a line."""
    root, stack = Block("root", []), []
    stack.append(root)
    spaced = re.sub(r"[#!][^\n]*", "", text).replace("{", " {\n").replace("}", "\n}\n")
    for line in spaced.splitlines():
        words = shlex.split(line, posix=True) if line.strip() else []
        if not words:
            continue
        if words == ["}"]:
            if len(stack) > 1:
                stack.pop()
            continue
        block = Block(words[0], [w for w in words[1:] if w != "{"])
        stack[-1].children.append(block)
        if words[-1] == "{":
            stack.append(block)
    return root


def _lbs(lab: Lab) -> list[str]:
    return lab.hosts("lb")


def _run(lab: Lab):
    """run(host, command) for the drill helpers."""
    return lambda host, command: lab.host(host).run(command)


def _configs(lab: Lab) -> dict[str, Block]:
    """Each lb host's parsed keepalived.conf (empty when unreadable)."""
    return {h: parse_keepalived(lab.host(h).run(f"cat {CONF}").stdout) for h in _lbs(lab)}


def _instance(conf: Block) -> Block:
    """The first vrrp_instance, or an empty block."""
    found = conf.find("vrrp_instance")
    return found[0] if found else Block("vrrp_instance", [])


def vip(lab: Lab) -> Verdict:
    """The VIP is on exactly one lb host."""
    holders = drill.vip_holders(_run(lab), _lbs(lab), lab.vip)
    return expect(len(holders) == 1, expected=f"{lab.vip} on exactly one of {', '.join(_lbs(lab))}",
                  found=f"on {', '.join(holders) or 'none'}")


def vip_http(lab: Lab) -> Verdict:
    """HTTP through the VIP answers, and nginx answers on every lb host's own address (either may hold it)."""
    targets = [httpprobe.url(a, lab.ports["http"]) for a in [lab.vip] + [lab.address(h) for h in _lbs(lab)]]
    replies = {t: httpprobe.get(t) for t in targets}
    return expect(all(r.ok for r in replies.values()),
                  expected=f"2xx answers from {', '.join(targets)}",
                  found=", ".join(f"{t}: {r.describe()}" + (f" from {r.served_by}" if r.served_by else "")
                                  for t, r in replies.items()))


def track_script(lab: Lab) -> Verdict:
    """Each lb host tracks a local nginx check that runs every second with fall and rise."""
    problems = {h: _track_problem(conf) for h, conf in _configs(lab).items()}
    bad = {h: p for h, p in problems.items() if p}
    return expect(not bad, expected="on every lb host a vrrp_script about nginx with interval 1, fall and rise, "
                                    "listed in the instance's track_script",
                  found="; ".join(f"{h}: {p}" for h, p in bad.items()) or "all set")


def _track_problem(conf: Block) -> str:
    tracked = {c.name for t in _instance(conf).find("track_script") for c in t.children}
    for script in conf.find("vrrp_script"):
        text = script.first_arg("script")
        local_nginx = re.search(r"nginx|127\.0\.0\.1|localhost", text)
        timing = script.first_arg("interval") == "1" and script.find("fall") and script.find("rise")
        if script.args and script.args[0] in tracked and local_nginx and timing:
            return ""
    return f"scripts {[s.args[0] for s in conf.find('vrrp_script') if s.args] or 'none'}, tracked {sorted(tracked) or 'none'}"


def preemption(lab: Lab) -> Verdict:
    """Both nodes start as BACKUP with nopreempt, authenticate, and have different priorities."""
    found = {}
    for host, conf in _configs(lab).items():
        inst = _instance(conf)
        auth = inst.find("authentication")
        found[host] = (inst.first_arg("state"), bool(inst.find("nopreempt")), inst.first_arg("priority"),
                       bool(auth and auth[0].find("auth_pass")))
    priorities = [f[2] for f in found.values()]
    good = all(f[0] == "BACKUP" and f[1] and f[2] and f[3] for f in found.values()) \
        and len(set(priorities)) == len(priorities)
    return expect(good, expected="state BACKUP, nopreempt, authentication with a password, different priorities",
                  found="; ".join(f"{h}: state {s or '?'}, nopreempt {n}, priority {p or '?'}, auth {a}"
                                  for h, (s, n, p, a) in found.items()))


def unicast(lab: Lab) -> Verdict:
    """Each node sends its adverts from its own address to the other lb hosts (unicast)."""
    found, good = {}, True
    for host, conf in _configs(lab).items():
        inst = _instance(conf)
        peers = sorted(c.name for p in inst.find("unicast_peer") for c in p.children)
        expected = sorted(lab.address(h) for h in _lbs(lab) if h != host)
        src = inst.first_arg("unicast_src_ip")
        good &= peers == expected and src == lab.address(host)
        found[host] = f"src {src or 'unset'}, peers {peers or 'none'}"
    return expect(good, expected="unicast_src_ip = own address and unicast_peer = the other lb hosts",
                  found="; ".join(f"{h}: {v}" for h, v in found.items()))


def notify_log(lab: Lab) -> Verdict:
    """A notify script logs state changes; the VIP holder's log shows it became MASTER."""
    log = lab.vars.get("stage6_keepalived_notify_log", "/var/log/keepalived-notify.log")
    holders = drill.vip_holders(_run(lab), _lbs(lab), lab.vip)
    lines = {h: lab.host(h).run(f"tail -n 50 {shlex.quote(log)}").stdout.splitlines() for h in _lbs(lab)}
    notify = {h: any(c.name.startswith("notify") for c in _instance(conf).children)
              for h, conf in _configs(lab).items()}
    master_logged = bool(holders) and any("MASTER" in line for line in lines[holders[0]])
    return expect(all(notify.values()) and all(lines.values()) and master_logged,
                  expected=f"a notify script on every lb host, {log} on each, a MASTER line on the VIP holder",
                  found="; ".join(f"{h}: notify {'set' if notify[h] else 'unset'}, {len(lines[h])} log lines, "
                                  f"last: {lines[h][-1] if lines[h] else '-'}" for h in _lbs(lab)))


def active(lab: Lab) -> Verdict:
    """keepalived runs and starts at boot on every lb host."""
    states = {h: (lab.host(h).service("keepalived").is_running, lab.host(h).service("keepalived").is_enabled)
              for h in _lbs(lab)}
    return expect(all(r and e for r, e in states.values()), expected="keepalived running and enabled on every lb host",
                  found=", ".join(f"{h}: {'running' if r else 'stopped'}/{'enabled' if e else 'disabled'}"
                                  for h, (r, e) in states.items()))


def failover_drill(lab: Lab) -> Verdict:
    """The last `lab drill failover` (stop-nginx) ran against the current config, moved the VIP, with an outage under 3 s."""
    last = drill.load_last(method=DRILL_METHOD)
    if last is None:
        return expect(False, expected=f"a {DRILL_METHOD} drill result in {drill.drills_dir()}",
                      found=f"no {DRILL_METHOD} drill has run")
    current = drill.config_fingerprint(_run(lab), _lbs(lab))
    same_config = last.get("config_sha256") == current
    outage = last.get("outage_s")
    good = same_config and last.get("recovered") and last.get("to_host") and outage is not None \
        and outage < MAX_OUTAGE_S
    return expect(good, expected=f"a drill against the current keepalived.conf with the VIP moved and an outage "
                                 f"under {MAX_OUTAGE_S:g} s",
                  found=f"drill of {last.get('started_at', '?')}: {last.get('from_host')} -> {last.get('to_host')}, "
                        f"outage {outage} s, {last.get('failed')}/{last.get('requests')} failed, "
                        f"config {'unchanged since' if same_config else 'changed since (run the drill again)'}")
