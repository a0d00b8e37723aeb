"""Stage 6 config checks against a fake lab: the reference config passes, the starting point and
common mistakes fail."""
from types import SimpleNamespace

from lab_tasks.checks import stage6_keepalived as checks

ADDRESSES = {"lb1": "10.213.7.11", "lb2": "10.213.7.12"}


def conf(host: str, state: str = "BACKUP", priority: int = 150, nopreempt: bool = True,
         fall: str = "fall 1", peer: str | None = None) -> str:
    other = peer or ADDRESSES["lb2" if host == "lb1" else "lb1"]
    return f"""
global_defs {{
    router_id {host}
    enable_script_security
}}
vrrp_script chk_nginx {{
    script "/usr/bin/curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8081/health"
    interval 1
    {fall}
    rise 2
}}
vrrp_instance VI_LB {{
    state {state}
    interface host0
    virtual_router_id 51
    priority {priority}
    {'nopreempt' if nopreempt else ''}
    authentication {{
        auth_type PASS
        auth_pass abcd1234
    }}
    unicast_src_ip {ADDRESSES[host]}
    unicast_peer {{
        {other}
    }}
    virtual_ipaddress {{
        10.213.7.100/24 dev host0
    }}
    track_script {{
        chk_nginx
    }}
    notify /usr/local/sbin/keepalived-notify
}}
"""


class FakeLab:
    """Just enough of Lab: each host's `cat` of keepalived.conf."""

    vip = "10.213.7.100"
    ports = {"http": 80}
    vars: dict = {}

    def __init__(self, configs: dict[str, str]):
        self.configs = configs

    def hosts(self, group=None):
        return list(ADDRESSES)

    def address(self, name):
        return ADDRESSES[name]

    def host(self, name):
        return SimpleNamespace(run=lambda command: SimpleNamespace(rc=0, stdout=self.configs[name], stderr=""))


REFERENCE = {"lb1": conf("lb1"), "lb2": conf("lb2", priority=100)}
STARTING_POINT = {h: f"global_defs {{\n    router_id {h}\n}}\n" for h in ADDRESSES}


def test_reference_config_passes():
    lab = FakeLab(REFERENCE)
    for check in (checks.track_script, checks.preemption, checks.unicast):
        assert check(lab).passed, check(lab).evidence


def test_starting_point_fails():
    lab = FakeLab(STARTING_POINT)
    for check in (checks.track_script, checks.preemption, checks.unicast):
        assert not check(lab).passed


def test_master_state_or_equal_priorities_fail_preemption():
    assert not checks.preemption(FakeLab({**REFERENCE, "lb1": conf("lb1", state="MASTER")})).passed
    assert not checks.preemption(FakeLab({**REFERENCE, "lb2": conf("lb2", priority=150)})).passed
    assert not checks.preemption(FakeLab({**REFERENCE, "lb2": conf("lb2", priority=100, nopreempt=False)})).passed


def test_track_script_needs_fall_and_rise():
    lab = FakeLab({**REFERENCE, "lb2": conf("lb2", priority=100, fall="")})
    verdict = checks.track_script(lab)
    assert not verdict.passed and "lb2" in verdict.evidence


def test_unicast_peer_must_be_the_other_host():
    lab = FakeLab({**REFERENCE, "lb1": conf("lb1", peer="10.213.7.99")})
    assert not checks.unicast(lab).passed
