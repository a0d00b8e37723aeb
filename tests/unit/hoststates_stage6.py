"""Recorded host states of stage 6 (keepalived VRRP): the solved lb1/lb2 and the near misses a learner reaches.

Each lb host records its keepalived.conf, `ip -br addr`, systemd's view of keepalived and keepalived's
journal since it started (the states it entered, its track script's results), the notify script and log.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from hoststates import FakeFile, FakeHost, FakeInventory, NearMiss, fake_lab

from lab_tasks.httpprobe import Reply

STAGE = "stage6"
ADDRESSES = {"lb1": "10.213.7.11", "lb2": "10.213.7.12"}
VIP = "10.213.7.100"
CONF = "/etc/keepalived/keepalived.conf"
NOTIFY = "/usr/local/sbin/keepalived-notify"
LOG = "/var/log/keepalived-notify.log"
BALANCER = """# configuration file /etc/nginx/conf.d/upstreams.conf:
upstream opslab_app { least_conn; server 10.213.7.21:80 weight=2; server 10.213.7.22:80; }
# configuration file /etc/nginx/sites-enabled/lb.conf:
server { listen 80 default_server; location / { proxy_pass http://opslab_app; } }
"""
STOCK = "server { listen 80 default_server; root /var/www/html; index index.nginx-debian.html; }\n"
APPS = {"app1": "10.213.7.21", "app2": "10.213.7.22"}
STARTED = 1764669600  # keepalived's start on both hosts (unix time)
CONF_WRITTEN = STARTED - 60


@dataclass
class TimedFile(FakeFile):
    """A FakeFile with testinfra's mtime."""

    written: int = CONF_WRITTEN

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.written, timezone.utc)


def cmd(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def conf(host: str, *, state="BACKUP", priority=None, nopreempt=True, auth="auth_pass s3cretpw", interval="1",
         fall="2", rise="2", weight="", script="/usr/bin/curl -fsS -o /dev/null --max-time 1 "
                                               "http://127.0.0.1:8081/health",
         track="chk_nginx", peer=None, src=None, notify=f"notify {NOTIFY}", vip=VIP) -> str:
    """keepalived.conf as the reference solution renders it, with the parts a near miss changes."""
    other = peer if peer is not None else ADDRESSES["lb2" if host == "lb1" else "lb1"]
    priority = priority or (250 if host == "lb1" else 200)
    return f"""global_defs {{
    router_id {host}
    script_user root
    enable_script_security
}}

vrrp_script chk_nginx {{
    script "{script}"
    interval {interval}
    timeout 1
    fall {fall}
    rise {rise}
    {weight}
}}

vrrp_instance VI_LB {{
    state {state}
    interface host0
    virtual_router_id 51
    priority {priority}
    advert_int 1
    {'nopreempt' if nopreempt else ''}
    authentication {{
        auth_type PASS
        {auth}
    }}
    unicast_src_ip {src or ADDRESSES[host]}
    {'unicast_peer {' + chr(10) + other + chr(10) + '}' if other else ''}
    virtual_ipaddress {{
        {vip}/24 dev host0
    }}
    track_script {{
        {track}
    }}
    {notify}
}}
"""


def journal(states: list[str], script="succeeded", reloaded: int | None = None) -> str:
    """keepalived's journal since it started (`journalctl -o short-unix`)."""
    lines = [f"{STARTED}.100000 lb Keepalived[101]: Starting VRRP child process, pid=102"]
    lines += [f"{STARTED + 1}.200000 lb Keepalived_vrrp[102]: VRRP_Script(chk_nginx) {script}"]
    if reloaded:
        lines.append(f"{reloaded}.000000 lb Keepalived[101]: Reloading ...")
    lines += [f"{STARTED + 2 + i}.000000 lb Keepalived_vrrp[102]: (VI_LB) Entering {s} STATE"
              + (" (init)" if i == 0 and s == "BACKUP" else "") for i, s in enumerate(states)]
    return "\n".join(lines) + "\n"


def notify_lines(states: list[str]) -> str:
    return "".join(f"2026-12-02T10:00:0{i}+00:00 INSTANCE VI_LB {s} 250\n" for i, s in enumerate(states))


def lb(host: str, *, config: str | None = None, holds_vip=None, running=True, enabled=True,
       states: list[str] | None = None, script="succeeded", log: str | None = None, notify_mode=0o755,
       notify_user="root", conf_written=CONF_WRITTEN, reloaded=None, nginx_t=BALANCER) -> FakeHost:
    """One lb host as recorded on the solved sandbox (lb1 holds the VIP), with what a near miss changes."""
    holds_vip = (host == "lb1") if holds_vip is None else holds_vip
    states = states if states is not None else (["BACKUP", "MASTER"] if host == "lb1" else ["BACKUP"])
    vip = f" {VIP}/24" if holds_vip else ""
    show = (f"ActiveState={'active' if running else 'inactive'}\nUnitFileState={'enabled' if enabled else 'disabled'}\n"
            f"ExecMainStartTimestamp={'@' + str(STARTED) if running else ''}\n")
    commands = {
        "ip -br addr": f"lo UNKNOWN 127.0.0.1/8\nhost0@if5 UP {ADDRESSES[host]}/24{vip}\n",
        cmd("systemctl", "show", "keepalived", "--timestamp=unix", "-p", "ActiveState", "-p", "UnitFileState",
            "-p", "ExecMainStartTimestamp"): show,
        f"sha256sum {CONF}": f"{'a' * 64}  {CONF}\n",
        cmd("nginx", "-T"): nginx_t,
    }
    if running:
        commands[cmd("journalctl", "--no-pager", "-o", "short-unix", "-u", "keepalived", "--since", f"@{STARTED}")] = \
            journal(states, script, reloaded)
    return FakeHost(
        files={CONF: TimedFile(config if config is not None else conf(host), written=conf_written, mode=0o640),
               NOTIFY: FakeFile("#!/bin/sh\n", mode=notify_mode, user=notify_user),
               LOG: log if log is not None else notify_lines(states)},
        commands=commands)


def http(**changes: list[Reply]):
    """HTTP from the control host: the VIP and both lb hosts answer with a balanced backend page."""
    answers = {f"http://{VIP}/": Reply(200, "<h1>opslab backend app1</h1>", served_by="lb1"),
               **{f"http://{a}/": Reply(200, "<h1>opslab backend app2</h1>") for a in ADDRESSES.values()}}
    answers |= {f"http://{ADDRESSES.get(k, VIP)}/": v for k, v in changes.items()}
    return answers.__getitem__


def lab(tmp_path, lb1: FakeHost | None = None, lb2: FakeHost | None = None, replies=None, drill: dict | None = None):
    built = fake_lab(STAGE, {"lb1": lb1 or lb("lb1"), "lb2": lb2 or lb("lb2")},
                     inventory=FakeInventory({"lb": ADDRESSES, "app": APPS}, vip=VIP))
    built.http_get = replies or http()
    built.drills_dir = tmp_path / "drills"
    built.drills_dir.mkdir(parents=True, exist_ok=True)
    result = {"method": "stop-nginx", "from_host": "lb1", "to_host": "lb2", "started_at": "2026-12-02T10:00:00Z",
              "outage_s": 1.2, "recovered": True, "failed": 3, "requests": 200,
              "config_sha256": {h: "a" * 64 for h in ADDRESSES}} | (drill or {})
    (built.drills_dir / "last-failover-stop-nginx.json").write_text(json.dumps(result))
    return built


def solved(tmp_path):
    return lab(tmp_path)


def _miss(task, mistake, says, **parts) -> NearMiss:
    return NearMiss(task, mistake, lambda tmp_path: lab(tmp_path, **parts), says)


NEAR_MISSES = [
    _miss("vip", "VIP added by hand on lb1, keepalived never started", "added by hand",
          lb1=lb("lb1", running=False), lb2=lb("lb2", running=False)),
    _miss("vip", "VIP added by hand on the BACKUP node as well", "on lb1 and lb2", lb2=lb("lb2", holds_vip=True)),
    _miss("vip", "VIP added by hand on lb2 while keepalived there is BACKUP", "lb2 holds 10.213.7.100 but its keepalived is BACKUP",
          lb1=lb("lb1", holds_vip=False), lb2=lb("lb2", holds_vip=True)),
    _miss("vip", "keepalived running on one node only", "keepalived is not running on lb2",
          lb2=lb("lb2", running=False)),
    _miss("vip", "a different VIP in keepalived.conf", "no VRRP instance with 10.213.7.100",
          lb2=lb("lb2", config=conf("lb2", vip="10.213.7.101"))),
    _miss("vip-http", "lb2 serves the stock welcome page", "lb2: no site on port 80 passes requests to the app hosts",
          lb2=lb("lb2", nginx_t=STOCK), replies=http(lb2=Reply(200, "<title>Welcome to nginx!</title>"))),
    _miss("vip-http", "nginx not running on lb2", "lb2: no answer", replies=http(lb2=Reply(None, error="refused"))),
    _miss("vip-http", "lb2's upstream copied with app2 left out", "lb2: the balancer's upstream leaves out app2",
          lb2=lb("lb2", nginx_t=BALANCER.replace(" server 10.213.7.22:80;", ""))),
    _miss("track-script", "the script is defined but the instance does not track it", "tracks no defined script",
          lb1=lb("lb1", config=conf("lb1", track=""))),
    _miss("track-script", "a failing script only lowers the priority (weight)", "only changes the priority",
          lb2=lb("lb2", config=conf("lb2", weight="weight -20"))),
    _miss("track-script", "gives up at the first failure", "gives the VIP up after 1 failed run",
          lb1=lb("lb1", config=conf("lb1", fall="1"))),
    _miss("track-script", "checks every 5 seconds", "runs every 5 s", lb1=lb("lb1", config=conf("lb1", interval="5"))),
    _miss("track-script", "a script that does not look at nginx", "does not look at nginx",
          lb1=lb("lb1", config=conf("lb1", script="/bin/true"))),
    _miss("track-script", "keepalived refuses or fails the script (not executable, unsafe)",
          "keepalived reports chk_nginx failed while nginx is up", lb2=lb("lb2", script="failed")),
    _miss("preemption", "lb1 configured as MASTER", "lb1 starts as MASTER",
          lb1=lb("lb1", config=conf("lb1", state="MASTER"))),
    _miss("preemption", "nopreempt missing on lb2", "lb2 preempts", lb2=lb("lb2", config=conf("lb2", nopreempt=False))),
    _miss("preemption", "equal priorities", "the priorities are equal",
          lb2=lb("lb2", config=conf("lb2", priority=250))),
    _miss("preemption", "different passwords on the nodes", "different passwords",
          lb2=lb("lb2", config=conf("lb2", auth="auth_pass other123"))),
    _miss("preemption", "no password", "lb1's adverts carry no password", lb1=lb("lb1", config=conf("lb1", auth=""))),
    _miss("unicast", "still multicast on lb2", "lb2 sends its adverts by multicast",
          lb2=lb("lb2", config=conf("lb2", peer=""))),
    _miss("unicast", "lb1 names itself as the peer", "lb1 sends its adverts to 10.213.7.11",
          lb1=lb("lb1", config=conf("lb1", peer="10.213.7.11"))),
    _miss("unicast", "lb2 sends from the VIP", "lb2 sends from 10.213.7.100",
          lb2=lb("lb2", config=conf("lb2", src=VIP))),
    _miss("notify-log", "no notify script in the instance", "lb2: the VRRP instance runs no notify script",
          lb2=lb("lb2", config=conf("lb2", notify=""))),
    _miss("notify-log", "a MASTER line written by hand, the script never ran", "do not name those states",
          lb1=lb("lb1", log="MASTER\n")),
    _miss("notify-log", "the script is writable by everyone (keepalived refuses it)", "writable by root only",
          lb1=lb("lb1", notify_mode=0o777)),
    _miss("notify-log", "the lines carry no time", "carry no time",
          lb2=lb("lb2", log="INSTANCE VI_LB BACKUP 200\n")),
    _miss("active", "started but not enabled", "lb2: keepalived does not start at boot", lb2=lb("lb2", enabled=False)),
    _miss("active", "enabled but not started", "lb1: keepalived is not running", lb1=lb("lb1", running=False)),
    _miss("active", "keepalived.conf edited after the last start, not reloaded", "changed after keepalived last read it",
          lb2=lb("lb2", conf_written=STARTED + 600)),
    _miss("failover-drill", "the drill ran before the last keepalived.conf change", "changed since",
          drill={"config_sha256": {"lb1": "b" * 64, "lb2": "a" * 64}}),
    _miss("failover-drill", "an outage of 5 s", "outage 5.0 s", drill={"outage_s": 5.0}),
    _miss("failover-drill", "the VIP did not move", "lb1 -> None", drill={"to_host": None, "recovered": False}),
]
