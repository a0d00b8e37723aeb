"""The capstone checks' parsing and judging on recorded config: the reference passes, the starting point
and the near misses a learner makes (buffering off in the wrong server block, a node marked backup, the
nodes' script defined but not tracked, a drop-in that resets User=) fail saying what was found.

Whole tasks on recorded platform states (HTTP included) are in hoststates_stage9.py, run by
test_near_misses.py and test_hints_leak.py."""
import pytest

from hoststates_stage9 import EDGES, HARDENED, NODES, NODES_SCRIPT, VIP, keepalived_conf, nginx_t

from lab_tasks.checks import capstone as checks
from lab_tasks.parsers import keepalived as kconf
from lab_tasks.parsers import nginx as nconf

def tracking(text: str, host: str = "edge1", bodies: dict | None = None) -> list[str]:
    bodies = {"chk_inference_nodes": NODES_SCRIPT} if bodies is None else bodies
    return checks.tracking_problems(kconf.parse(text), bodies, VIP, EDGES[host],
                                    [a for h, a in EDGES.items() if h != host], 8000, list(NODES.values()))


# ---- nginx: streaming unbuffered --------------------------------------------------------------------------

def test_reference_edge_streams_unbuffered():
    assert checks.buffering_problem(nconf.parse(nginx_t()), 80) == ""


def test_buffering_left_on_with_the_server_header_ignored_fails():
    text = nginx_t(location="proxy_ignore_headers X-Accel-Buffering;", health_extra="proxy_buffering off;")
    problem = checks.buffering_problem(nconf.parse(text), 80)
    assert "proxy_buffering is on (the default)" in problem and "X-Accel-Buffering header is ignored" in problem


def test_buffering_off_in_the_health_server_does_not_count():
    problem = checks.buffering_problem(nconf.parse(nginx_t(location="", health_extra="proxy_buffering off;")), 80)
    assert problem.startswith("location /: proxy_buffering is on")


def test_buffering_off_for_the_whole_api_server_counts():
    text = nginx_t(location="").replace("client_max_body_size 16m;", "client_max_body_size 16m;\n    proxy_buffering off;")
    assert checks.buffering_problem(nconf.parse(text), 80) == ""


def test_buffering_off_in_the_http_block_counts():
    assert checks.buffering_problem(nconf.parse(nginx_t(location="", http_extra="proxy_buffering off;")), 80) == ""


def test_explicit_buffering_on_and_a_cache_fail():
    problem = checks.buffering_problem(nconf.parse(nginx_t(location="proxy_buffering on;\n proxy_cache api;")), 80)
    assert "proxy_buffering is on there" in problem and "proxy_cache api" in problem


def test_no_api_site_says_so():
    text = nginx_t().replace("proxy_pass http://opslab_inference;", "root /var/www/html;")
    assert checks.buffering_problem(nconf.parse(text), 80) == "no server on port 80 proxies to an upstream block"


# ---- nginx: both nodes in rotation -----------------------------------------------------------------------------

def rotation_of(servers: str) -> dict[str, str]:
    site = checks.api_site(nconf.parse(nginx_t(servers=servers)), 80)
    return checks.rotation(site[2], NODES, 8000)


def test_reference_upstream_has_both_nodes_in_rotation():
    assert set(rotation_of("server 10.213.7.71:8000 max_fails=2;\n server 10.213.7.72:8000 max_fails=2;").values()) \
        == {"in rotation"}


@pytest.mark.parametrize(("line", "state"), [
    ("server 10.213.7.72:8000 max_fails=2 fail_timeout=10s down;", "marked down"),
    ("server 10.213.7.72:8000 backup;", "backup only"),
    ("# server 10.213.7.72:8000;", "not listed"),
    ("server 10.213.7.72:8080;", "not listed"),
])
def test_a_node_out_of_rotation_is_named(line, state):
    assert rotation_of(f"server 10.213.7.71:8000;\n    {line}") == {"infer1": "in rotation", "infer2": state}


# ---- keepalived: tracking nginx and the nodes ------------------------------------------------------------------

def test_reference_keepalived_tracks_nginx_and_the_nodes():
    assert tracking(keepalived_conf("edge1")) == []
    assert tracking(keepalived_conf("edge2"), host="edge2") == []


def test_nodes_script_defined_but_not_tracked_fails():
    problems = tracking(keepalived_conf("edge1", track=("chk_edge_nginx",)))
    assert problems == ["no tracked script checks the inference nodes' health (tracked: ['chk_edge_nginx'])"]


def test_nodes_script_whose_file_checks_nothing_fails():
    problems = tracking(keepalived_conf("edge1"), bodies={"chk_inference_nodes": "#!/bin/sh\nexit 0\n"})
    assert any("inference nodes" in p for p in problems)


def test_only_the_nodes_tracked_misses_nginx():
    problems = tracking(keepalived_conf("edge1", track=("chk_inference_nodes",)))
    assert problems == ["no tracked script checks nginx on the host itself (tracked: ['chk_inference_nodes'])"]


def test_preempting_master_and_wrong_vip_fail():
    assert any("nopreempt unset" in p for p in tracking(keepalived_conf("edge1", nopreempt=False)))
    assert tracking(keepalived_conf("edge1", vip="10.213.7.100")) == [f"no vrrp_instance holds {VIP}"]


def test_multicast_fails():
    text = keepalived_conf("edge1").replace("unicast_peer {\n        10.213.7.62\n    }", "")
    assert tracking(text) == ["unicast from 10.213.7.61 to nobody"]


# ---- systemd hardening --------------------------------------------------------------------------------------

def test_hardened_unit_passes():
    assert checks.hardening_problems(HARDENED, "opslab-inference") == []


def test_debug_dropin_resetting_user_and_sandboxing_fails():
    props = {**HARDENED, "User": "", "NoNewPrivileges": "no", "ProtectSystem": "no", "MemoryMax": "infinity"}
    assert checks.hardening_problems(props, "root") == [
        "runs as root (no User=)", "NoNewPrivileges=no", "ProtectSystem=no", "no MemoryMax"]


def test_protect_system_full_is_not_strict_and_a_stopped_unit_fails():
    problems = checks.hardening_problems({**HARDENED, "ProtectSystem": "full", "ActiveState": "failed"}, "")
    assert problems == ["not running (failed)", "ProtectSystem=full"]


# ---- streaming timing and metrics --------------------------------------------------------------------------

def test_chunks_spread_over_the_response_pass():
    ok, found = checks.stream_timing([0.05 + 0.02 * i for i in range(40)], 0.9)
    assert ok and "first after 50 ms" in found


def test_chunks_arriving_together_at_the_end_fail():
    ok, found = checks.stream_timing([0.900, 0.901, 0.901, 0.902, 0.902], 0.91)
    assert not ok and "5 content chunks" in found


def test_too_few_chunks_fail():
    assert checks.stream_timing([0.1, 0.5], 0.6)[0] is False


def test_success_count_sums_every_label_set():
    text = ('# HELP vllm:request_success_total Finished requests\n'
            'vllm:request_success_total{finished_reason="length",model_name="m"} 7.0\n'
            'vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0\n'
            'vllm:request_success_created 1.7e9\n')
    assert checks.success_count(text) == 10.0
