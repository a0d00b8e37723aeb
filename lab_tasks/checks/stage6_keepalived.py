"""Checks for stage 6: a VIP shared by the lb hosts with keepalived VRRP.

Read-only: `ip -br addr`, keepalived.conf, systemd's and the journal's view of keepalived (which states
its VRRP instance entered since it last started), the notify log, one request through the VIP, and the
result file `lab drill failover` left on the control host. keepalived's own journal is what tells an
address keepalived holds from one added by hand.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from lab_tasks import drill, httpprobe
from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read, run
from lab_tasks.parsers import keepalived, nginx
from lab_tasks.parsers.keepalived import Block

MAX_OUTAGE_S = 3.0
DRILL_METHOD = "stop-nginx"  # the task: nginx dies on the VIP holder
CONF = drill.KEEPALIVED_CONF
UNIT = "keepalived"
STATE_LINE = re.compile(r"^(?P<t>\d+)(?:\.\d+)? .*\((?P<instance>[^)]+)\) Entering (?P<state>[A-Z]+) STATE")
SCRIPT_LINE = re.compile(r"VRRP_Script\((?P<name>[^)]+)\) (?P<result>succeeded|failed|timed out)")
RELOAD_LINE = re.compile(r"^(?P<t>\d+)(?:\.\d+)? .*Reloading \.\.\.")
LOCAL_NGINX = re.compile(r"\bnginx\b|127\.0\.0\.1|localhost|\[::1\]")


@dataclass(frozen=True)
class Keepalived:
    """systemd's and keepalived's own view of one node since keepalived last started."""

    running: bool
    enabled: bool
    started: int  # unix time of the current start (0 when not running)
    states: list[tuple[str, str]]  # (instance, state) in the order keepalived entered them
    scripts: dict[str, str]  # vrrp_script name -> its last result (succeeded, failed, timed out)
    loaded: int  # unix time keepalived last read its config (start or reload)

    def state(self, instance: str) -> str:
        """The state the instance is in now, by keepalived's own log ('' when it never said)."""
        return next((s for i, s in reversed(self.states) if i == instance), "")


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p ...` output as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def parse_journal(lines: list[str], started: int) -> tuple[list[tuple[str, str]], dict[str, str], int]:
    """(states entered, last track-script results, last config load time) from `journalctl -o short-unix`."""
    states, scripts, loaded = [], {}, started
    for line in lines:
        if match := STATE_LINE.search(line):
            states.append((match["instance"], match["state"]))
        if match := SCRIPT_LINE.search(line):
            scripts[match["name"]] = match["result"]
        if match := RELOAD_LINE.search(line):
            loaded = max(loaded, int(match["t"]))
    return states, scripts, loaded


def keepalived_view(host) -> Keepalived:
    """What systemd and keepalived's journal say about keepalived on `host` (read-only)."""
    show = parse_show(run(host, "systemctl", "show", UNIT, "--timestamp=unix", "-p", "ActiveState",
                          "-p", "UnitFileState", "-p", "ExecMainStartTimestamp").stdout)
    running = show.get("ActiveState") == "active"
    started = int(show.get("ExecMainStartTimestamp", "").lstrip("@") or 0) if running else 0
    lines = run(host, "journalctl", "--no-pager", "-o", "short-unix", "-u", UNIT, "--since",
                f"@{started}").stdout.splitlines() if running else []
    states, scripts, loaded = parse_journal(lines, started)
    return Keepalived(running, show.get("UnitFileState") == "enabled", started, states, scripts, loaded)


def _lbs(lab: Lab) -> list[str]:
    return lab.hosts("lb")


def _runner(lab: Lab):
    """run(host, command) for the drill helpers."""
    return lambda host, command: lab.host(host).run(command)


def _configs(lab: Lab) -> dict[str, Block]:
    """Each lb host's parsed keepalived.conf (empty when unreadable)."""
    return {h: keepalived.parse(read(lab.host(h), CONF) or "") for h in _lbs(lab)}


def _instance(conf: Block, vip: str) -> Block:
    """The vrrp_instance that carries the VIP, else the first one, else an empty block."""
    found = keepalived.instances(conf)
    with_vip = [i for i in found if vip in keepalived.virtual_addresses(i)]
    return (with_vip or found or [Block("vrrp_instance", [])])[0]


def _views(lab: Lab) -> dict[str, Keepalived]:
    return {h: keepalived_view(lab.host(h)) for h in _lbs(lab)}


def vip_problems(holders: list[str], configs: dict[str, Block], views: dict[str, Keepalived], vip: str) -> list[str]:
    """Why the VIP is not held by keepalived on exactly one node (in words)."""
    if len(holders) != 1:
        return [f"{vip} is on {' and '.join(holders) if holders else 'no lb host'}; the goal asks for exactly one"]
    problems = []
    for host, view in views.items():
        instance = _instance(configs[host], vip)
        if vip not in keepalived.virtual_addresses(instance):
            problems.append(f"{host}'s keepalived.conf has no VRRP instance with {vip}")
            continue
        name = instance.args[0] if instance.args else "?"
        state = view.state(name) if view.running else ""
        if host in holders and not view.running:
            problems.append(f"{host} holds {vip} but keepalived is not running there (an address added by hand "
                            "never moves)")
        elif host in holders and state != "MASTER":
            problems.append(f"{host} holds {vip} but its keepalived is {state or 'silent'} for {name} (an address "
                            "added by hand, not by VRRP)")
        elif host not in holders and not view.running:
            problems.append(f"keepalived is not running on {host}, so nothing could take {vip} over")
    return problems


def vip(lab: Lab) -> Verdict:
    """The VIP is on exactly one lb host, and keepalived there is MASTER of the instance that carries it."""
    holders = drill.vip_holders(_runner(lab), _lbs(lab), lab.vip)
    problems = vip_problems(holders, _configs(lab), _views(lab), lab.vip)
    return expect(not problems, expected=f"{lab.vip} held by keepalived (VRRP MASTER) on exactly one of "
                                         f"{', '.join(_lbs(lab))}, the other node standing by",
                  found="; ".join(problems) or "that")


def balancer_problem(lab: Lab, host: str) -> str:
    """'' when the host's nginx runs the stage 5 balancer (a site on the http port passing to every app host)."""
    result = run(lab.host(host), "nginx", "-T")
    if result.rc != 0:
        return f"{host}: nginx rejects its configuration or is missing"
    site = nginx.balancing_site(nginx.parse(result.stdout), lab.ports["http"])
    if site is None:
        return f"{host}: no site on port {lab.ports['http']} passes requests to the app hosts (not the balancer)"
    missing = [a for a in lab.hosts("app") if lab.address(a) not in nginx.upstream_hosts(site[1]) and a not in
               nginx.upstream_hosts(site[1])]
    return f"{host}: the balancer's upstream leaves out {', '.join(missing)}" if missing else ""


def vip_http(lab: Lab) -> Verdict:
    """The VIP and every lb host's own address answer, and every lb host runs the stage 5 balancer."""
    targets = {lab.vip: "the VIP", **{lab.address(h): h for h in _lbs(lab)}}
    problems = []
    for address, name in targets.items():
        reply = lab.http_get(httpprobe.url(address, lab.ports["http"]))
        if not reply.ok:
            problems.append(f"{name}: no answer ({reply.describe()})")
    problems += [p for p in (balancer_problem(lab, h) for h in _lbs(lab)) if p]
    return expect(not problems, expected=f"the stage 5 balancer on each of {', '.join(_lbs(lab))}, answering on "
                                         "its own address and on the VIP",
                  found="; ".join(problems) or "that")


def _script_program(host, command: str) -> str:
    """The script text and, when it runs a file, that file's text (what the check reads to see what it tests)."""
    words = shlex.split(command) if command else []
    body = read(host, words[0]) if words and words[0].startswith("/") else None
    return command + "\n" + (body if body and "\0" not in body[:512] else "")


def track_problems(host: str, conf: Block, view: Keepalived, vip: str, program: str) -> list[str]:
    """Why a node's keepalived does not give the VIP up when its local nginx fails (in words)."""
    instance = _instance(conf, vip)
    tracked = keepalived.tracked_scripts(instance)
    defined = keepalived.scripts(conf)
    in_use = [n for n in tracked if n in defined]
    if not in_use:
        return [f"{host}: the VRRP instance tracks no defined script"
                + (f" ({', '.join(tracked)} is listed but not defined)" if tracked else "")]
    name, script = in_use[0], defined[in_use[0]]
    problems = []
    options = tracked[name]
    weight = options[1] if options[:1] == ["weight"] and len(options) > 1 else script.first_arg("weight")
    if weight not in ("", "0"):
        problems.append(f"{host}: a failing {name} only changes the priority, and with no preemption the VIP stays "
                        "put; the goal asks the node to give the VIP up")
    interval = script.first_arg("interval") or "1"  # keepalived's default
    if interval != "1":
        problems.append(f"{host}: {name} runs every {interval} s; the goal asks for every second")
    for option, words in (("fall", "gives the VIP up after"), ("rise", "takes part again after")):
        value = script.first_arg(option) or "1"  # keepalived's default
        if not value.isdigit() or int(value) < 2:
            problems.append(f"{host}: {name} {words} {value} {option == 'fall' and 'failed' or 'good'} run(s); "
                            "the goal asks for a few")
    if not LOCAL_NGINX.search(program):
        problems.append(f"{host}: {name} does not look at nginx on the node itself")
    result = view.scripts.get(name)
    if not view.running:
        problems.append(f"{host}: keepalived is not running, so nothing runs {name}")
    elif result != "succeeded":
        problems.append(f"{host}: keepalived reports {name} {result or 'never run'} while nginx is up")
    return problems


def track_script(lab: Lab) -> Verdict:
    """Each lb host tracks a local nginx check every second, with a few failures and successes to change state."""
    views, configs = _views(lab), _configs(lab)
    problems = []
    for host, conf in configs.items():
        script = keepalived.scripts(conf).get(next(iter(keepalived.tracked_scripts(_instance(conf, lab.vip))), ""))
        program = _script_program(lab.host(host), script.first_arg("script")) if script else ""
        problems += track_problems(host, conf, views[host], lab.vip, program)
    return expect(not problems, expected="on every lb host a tracked script that checks the local nginx every second, "
                                         "a few failures to give the VIP up and a few successes to take part again, "
                                         "succeeding now",
                  found="; ".join(problems) or "that")


def preemption_problems(configs: dict[str, Block], vip: str) -> list[str]:
    """Why the VIP could flap back or be taken over by a stranger (in words)."""
    problems, priorities, passwords = [], {}, set()
    for host, conf in configs.items():
        inst = _instance(conf, vip)
        state = inst.first_arg("state")
        if state != "BACKUP":
            problems.append(f"{host} starts as {state or 'MASTER (unset)'}; the goal asks both to start as BACKUP")
        if not inst.find("nopreempt"):
            problems.append(f"{host} preempts: a returning node takes the VIP back")
        priorities[host] = inst.first_arg("priority")
        auth = inst.find("authentication")
        password = auth[0].first_arg("auth_pass") if auth else ""
        if not password:
            problems.append(f"{host}'s adverts carry no password")
        passwords.add(password)
    if len(set(priorities.values())) != len(priorities):
        problems.append(f"the priorities are equal ({', '.join(f'{h} {p or 100}' for h, p in priorities.items())})")
    if len(passwords) > 1 and "" not in passwords:
        problems.append("the nodes use different passwords, so each rejects the other's adverts")
    return problems


def preemption(lab: Lab) -> Verdict:
    """Both nodes start as BACKUP with nopreempt, authenticate with one password, and have different priorities."""
    problems = preemption_problems(_configs(lab), lab.vip)
    return expect(not problems, expected="both nodes starting as BACKUP without preemption, different priorities, "
                                         "adverts carrying the same password",
                  found="; ".join(problems) or "that")


def unicast_problems(lab: Lab, configs: dict[str, Block]) -> list[str]:
    """Why a node does not send its adverts by unicast from its own address to the others (in words)."""
    problems = []
    for host, conf in configs.items():
        inst = _instance(conf, lab.vip)
        peers = sorted(c.name for p in inst.find("unicast_peer") for c in p.children)
        expected = sorted(lab.address(h) for h in _lbs(lab) if h != host)
        src = inst.first_arg("unicast_src_ip")
        if not peers:
            problems.append(f"{host} sends its adverts by multicast")
        elif peers != expected:
            problems.append(f"{host} sends its adverts to {', '.join(peers)}; the other lb host is "
                            f"{', '.join(expected)}")
        if peers and src != lab.address(host):
            problems.append(f"{host} sends from {src or 'an address keepalived picks'}, not from its lab address")
    return problems


def unicast(lab: Lab) -> Verdict:
    """Each node sends its adverts from its own address to the other lb hosts (unicast)."""
    problems = unicast_problems(lab, _configs(lab))
    return expect(not problems, expected="each node sending unicast adverts from its own lab address to the other "
                                         "lb host", found="; ".join(problems) or "that")


def notify_problems(host: str, conf: Block, view: Keepalived, log: list[str], vip: str,
                    script: tuple[str, int] | None) -> list[str]:
    """Why the node's notify log does not follow keepalived's own state changes (in words)."""
    inst = _instance(conf, vip)
    name = inst.args[0] if inst.args else "?"
    notifies = [c for c in inst.children if c.name.startswith("notify")]
    if not notifies:
        return [f"{host}: the VRRP instance runs no notify script"]
    problems = []
    if script is None:
        problems.append(f"{host}: the notify script is missing")
    elif script[0] != "root" or script[1] & 0o022 or not script[1] & 0o100:
        problems.append(f"{host}: the notify script must be executable, owned by root and writable by root "
                        "only, or keepalived refuses to run it")
    changes = [s for i, s in view.states if i == name]
    if not view.running:
        problems.append(f"{host}: keepalived is not running")
    elif not changes:
        problems.append(f"{host}: keepalived has logged no state change since it started")
    else:
        tail = log[-len(changes):]
        if len(tail) < len(changes) or any(state not in line or name not in line
                                            for state, line in zip(changes, tail)):
            problems.append(f"{host}: keepalived went through {' then '.join(changes)} since it started but the "
                            f"log's last lines do not name those states of {name}"
                            + (f" (last: {log[-1][:80]!r})" if log else " (the log is empty)"))
        elif not all(re.search(r"\d{1,2}:\d{2}", line) for line in tail):
            problems.append(f"{host}: the log lines carry no time")
    return problems


def notify_log(lab: Lab) -> Verdict:
    """A notify script logs every state change: the log's last lines follow keepalived's own transitions."""
    path = lab.vars.get("stage6_keepalived_notify_log", "/var/log/keepalived-notify.log")
    views, configs = _views(lab), _configs(lab)
    problems = []
    for host, conf in configs.items():
        notifies = [c for c in _instance(conf, lab.vip).children if c.name.startswith("notify") and c.args]
        script = None
        if notifies:
            f = lab.host(host).file(shlex.split(notifies[0].args[0])[0] if notifies[0].args[0] else "/")
            script = (f.user, f.mode) if f.exists and f.is_file else None
        log = (read(lab.host(host), path) or "").splitlines()
        problems += notify_problems(host, conf, views[host], log, lab.vip, script)
    return expect(not problems, expected=f"a notify script on every lb host whose lines in {path} (time, instance, "
                                         "new state) follow keepalived's own state changes",
                  found="; ".join(problems) or "that")


def active_problems(host: str, view: Keepalived, conf_mtime: int | None) -> list[str]:
    """Why keepalived is not running the current config from systemd at boot (in words)."""
    problems = []
    if not view.running:
        problems.append(f"{host}: keepalived is not running as a service")
    if not view.enabled:
        problems.append(f"{host}: keepalived does not start at boot")
    if view.running and conf_mtime and conf_mtime > view.loaded:  # whole seconds: the journal's and systemd's
        problems.append(f"{host}: keepalived.conf changed after keepalived last read it")
    return problems


def active(lab: Lab) -> Verdict:
    """keepalived runs from systemd with the current config and starts at boot on every lb host."""
    problems = []
    for host in _lbs(lab):
        f = lab.host(host).file(CONF)
        problems += active_problems(host, keepalived_view(lab.host(host)), int(f.mtime.timestamp()) if f.exists else None)
    return expect(not problems, expected="keepalived running with its current config and enabled at boot on every "
                                         "lb host", found="; ".join(problems) or "that")


def failover_drill(lab: Lab) -> Verdict:
    """The last `lab drill failover` (stop-nginx) ran against the current config, moved the VIP, with an outage under 3 s."""
    last = drill.load_last(lab.drills_dir, method=DRILL_METHOD)
    if last is None:
        return expect(False, expected=f"a {DRILL_METHOD} drill result in {lab.drills_dir or drill.drills_dir()}",
                      found=f"no {DRILL_METHOD} drill has run")
    current = drill.config_fingerprint(_runner(lab), _lbs(lab))
    same_config = last.get("config_sha256") == current
    outage = last.get("outage_s")
    moved = last.get("to_host") and last.get("to_host") != last.get("from_host")
    good = same_config and last.get("recovered") and moved and outage is not None and outage < MAX_OUTAGE_S
    return expect(good, expected=f"a drill against the current keepalived.conf with the VIP moved and an outage "
                                 f"under {MAX_OUTAGE_S:g} s",
                  found=f"drill of {last.get('started_at', '?')}: {last.get('from_host')} -> {last.get('to_host')}, "
                        f"outage {outage} s, {last.get('failed')}/{last.get('requests')} failed, "
                        f"config {'unchanged since' if same_config else 'changed since (run the drill again)'}")
