"""Checks for the capstone: the inference platform (nodes behind nginx + keepalived on the edge hosts).

Behaviour first: real requests from the control host to the edge VIP and to the nodes, `curl` from lab
hosts to test the nodes' firewall. Semantics that behaviour cannot show (a node marked `down`, buffering
that only the server's header switches off, the track scripts) come from `nginx -T`, keepalived.conf and
`systemctl show`, which only read. Requests generate a few tokens; nothing on the hosts changes.

Recorded-state tests give the Lab an `http_transport` (httpx) for the HTTP side (POSTs and streams, which
Lab.http_get does not cover) and a `drills_dir`.
"""
from __future__ import annotations

import json
import re
import shlex
import time

import httpx

from lab_tasks import drill, httpprobe
from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read
from lab_tasks.parsers import keepalived as kconf
from lab_tasks.parsers import nginx as nconf
from lab_tasks.topology import EDGE_GROUP, INFERENCE_GROUP
from lab_tasks.topology import vip as topology_vip

HARDENING = {  # systemctl show property -> values that count as hardened
    "NoNewPrivileges": {"yes"},
    "ProtectSystem": {"strict"},
    "ProtectHome": {"yes", "read-only", "tmpfs"},
    "PrivateTmp": {"yes"},
}
ROTATION_REQUESTS = 8
STREAM_TOKENS = 48
MAX_OUTAGE_S = 3.0
REQUEST_TIMEOUT_S = 60.0  # a CPU node may be busy with other requests


# ---- where things are ----------------------------------------------------------------------------------

def _edges(lab: Lab) -> list[str]:
    return lab.hosts(EDGE_GROUP)


def _nodes(lab: Lab) -> list[str]:
    return lab.hosts(INFERENCE_GROUP)


def _vip(lab: Lab) -> str:
    return getattr(lab.inventory, "edge_vip", None) or topology_vip(EDGE_GROUP)


def _api(lab: Lab) -> str:
    return httpprobe.url(_vip(lab), lab.ports["http"]).rstrip("/")


def _node_url(lab: Lab, node: str, path: str = "") -> str:
    return f"http://{lab.address(node)}:{lab.ports['inference']}{path}"


def _service(lab: Lab) -> str:
    return str(lab.vars.get("capstone_service", "opslab-inference"))


def _run(lab: Lab):
    """run(host, command) for the drill helpers."""
    return lambda host, command: lab.host(host).run(command)


# ---- pure helpers on recorded state (unit-tested) ---------------------------------------------------------

def api_site(root: nconf.Directive, http_port: int) -> tuple[nconf.Directive, nconf.Directive, nconf.Directive] | str:
    """(server block on the http port, the location proxying to an upstream, that upstream), or why none."""
    upstreams = nconf.upstreams(root)
    for server in nconf.servers(root):
        if not nconf.listens_on(server, http_port):
            continue
        for name in sorted(nconf.proxied_upstreams(server) & set(upstreams)):
            locations = nconf.proxying_locations(server, name)
            if locations:
                return server, locations[0], upstreams[name]
    return f"no server on port {http_port} proxies to an upstream block"


def _applied(root: nconf.Directive, block: nconf.Directive, name: str) -> list[str] | None:
    """`name` as nginx applies it in `block`: the block, its enclosing blocks, then the http block.

    `nginx -T` prints included files one after the other, so a site's enclosing http block is not its
    parent in the parsed tree; its own directives still apply."""
    found = nconf.effective(root, block, name)
    if found is not None:
        return found
    for http in root.find("http"):
        own = http.find(name)
        if own:
            return own[-1].args
    return None


def buffering_problem(root: nconf.Directive, http_port: int) -> str:
    """'' when the API location streams unbuffered whatever the server sends, else what is wrong."""
    site = api_site(root, http_port)
    if isinstance(site, str):
        return site
    _, location, _ = site
    where = f"location {' '.join(location.args) or '(server level)'}"
    problems = []
    buffering = _applied(root, location, "proxy_buffering")
    if buffering != ["off"]:
        ignored = "x-accel-buffering" in " ".join(_applied(root, location, "proxy_ignore_headers") or []).lower()
        problems.append(f"proxy_buffering is {' '.join(buffering) if buffering else 'on (the default)'} there"
                        + (" and the server's X-Accel-Buffering header is ignored" if ignored else ""))
    cache = _applied(root, location, "proxy_cache")
    if cache not in (None, ["off"]):
        problems.append(f"proxy_cache {' '.join(cache)} there")
    return f"{where}: {'; '.join(problems)}" if problems else ""


def rotation(upstream: nconf.Directive, nodes: dict[str, str], port: int) -> dict[str, str]:
    """Each node's state in the upstream: 'in rotation', 'not listed', 'marked down', 'backup only'."""
    options = nconf.server_options(upstream)
    states = {}
    for name, address in nodes.items():
        keys = [k for k in options if k in (f"{address}:{port}", f"{name}:{port}")]
        if not keys:
            states[name] = "not listed"
        elif "down" in options[keys[0]]:
            states[name] = "marked down"
        elif "backup" in options[keys[0]]:
            states[name] = "backup only"
        else:
            states[name] = "in rotation"
    return states


def tracking_problems(conf: kconf.Block, script_bodies: dict[str, str], vip: str, own_address: str,
                      peers: list[str], node_port: int, nodes: list[str]) -> list[str]:
    """What keeps one edge's keepalived.conf from the goal ([] when nothing)."""
    instance = next((i for i in kconf.instances(conf) if vip in kconf.virtual_addresses(i)), None)
    if instance is None:
        return [f"no vrrp_instance holds {vip}"]
    problems = []
    if instance.first_arg("state") != "BACKUP" or not instance.find("nopreempt"):
        problems.append(f"state {instance.first_arg('state') or '?'}, nopreempt "
                        f"{'set' if instance.find('nopreempt') else 'unset'} (wanted BACKUP with nopreempt)")
    found_peers = sorted(line.name for block in instance.find("unicast_peer") for line in block.children)
    if instance.first_arg("unicast_src_ip") != own_address or found_peers != sorted(peers):
        problems.append(f"unicast from {instance.first_arg('unicast_src_ip') or 'unset'} to {found_peers or 'nobody'}")
    scripts = kconf.scripts(conf)
    tracked = [name for name in kconf.tracked_scripts(instance) if name in scripts]
    texts = {name: scripts[name].first_arg("script") + "\n" + script_bodies.get(name, "") for name in tracked}
    if not any(re.search(r"nginx|127\.0\.0\.1|localhost", text) for text in texts.values()):
        problems.append(f"no tracked script checks nginx on the host itself (tracked: {tracked or 'none'})")
    node_check = re.compile(rf":{node_port}\b|" + "|".join(re.escape(n) for n in nodes))
    if not any(node_check.search(text) for text in texts.values()):
        problems.append(f"no tracked script checks the inference nodes' health (tracked: {tracked or 'none'})")
    return problems


def hardening_problems(props: dict[str, str], process_user: str) -> list[str]:
    """What keeps a unit (its `systemctl show` properties) from running hardened as its own user."""
    problems = []
    if props.get("ActiveState") != "active":
        problems.append(f"not running ({props.get('ActiveState') or 'unknown'})")
    user = props.get("User", "")
    if user in ("", "root", "0"):
        problems.append("runs as root (no User=)")
    elif process_user and process_user != user:
        problems.append(f"process runs as {process_user}, not {user}")
    for key, good in HARDENING.items():
        if props.get(key, "") not in good:
            problems.append(f"{key}={props.get(key) or 'unset'}")
    if props.get("MemoryMax", "infinity") == "infinity":
        problems.append("no MemoryMax")
    return problems


def stream_timing(arrivals: list[float], total_s: float) -> tuple[bool, str]:
    """Whether content chunks arrived spread over the response (not all at its end), and the numbers."""
    if len(arrivals) < 4:
        return False, f"{len(arrivals)} content chunks in {total_s:.2f} s"
    first, last = arrivals[0], arrivals[-1]
    spread_ok = first <= 0.5 * last and last - first >= 0.05
    return spread_ok, (f"{len(arrivals)} content chunks; first after {first * 1000:.0f} ms, "
                       f"last after {last * 1000:.0f} ms")


def success_count(metrics_text: str) -> float:
    """Finished requests a node's /metrics reports (vllm:request_success_total, all labels)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(None, 1)[-1])
    return total


# ---- probes -------------------------------------------------------------------------------------------------

def _http(lab: Lab) -> httpx.Client:
    return httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False, transport=getattr(lab, "http_transport", None))


def _status(http: httpx.Client, url: str) -> str:
    """The status code of GET `url`, or the error in a few words."""
    try:
        return str(http.get(url, timeout=5).status_code)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"[:200]


def _model(http: httpx.Client, base: str) -> str:
    """The served model's name from GET /v1/models ('' when it does not answer)."""
    try:
        data = http.get(f"{base}/v1/models").json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return ""


def _nginx_config(lab: Lab, host: str) -> nconf.Directive | str:
    result = lab.host(host).run("nginx -T")
    if result.rc != 0:
        return f"`nginx -T` on {host} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}"
    return nconf.parse(result.stdout)


def _keepalived(lab: Lab, host: str) -> tuple[kconf.Block, dict[str, str]]:
    """(parsed keepalived.conf, {script name: text of the file it runs, when it runs a file})."""
    conf = kconf.parse(read(lab.host(host), drill.KEEPALIVED_CONF) or "")
    bodies = {}
    for name, script in kconf.scripts(conf).items():
        words = shlex.split(script.first_arg("script")) if script.first_arg("script") else []
        if words and words[0].startswith("/") and not words[0].endswith("/curl"):
            bodies[name] = read(lab.host(host), words[0]) or ""
    return conf, bodies


# ---- the tasks -----------------------------------------------------------------------------------------------

def hardened(lab: Lab) -> Verdict:
    """The inference service runs on every node as its own user, with the systemd hardening in place."""
    service, found = _service(lab), {}
    props_wanted = "ActiveState,User,MainPID,MemoryMax," + ",".join(HARDENING)
    for node in _nodes(lab):
        host = lab.host(node)
        out = host.run(f"systemctl show {shlex.quote(service)} -p {props_wanted}").stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = props.get("MainPID", "0")
        # /proc/PID belongs to the process's user (ps would cut a long name short)
        user = host.run(f"stat -c %U /proc/{int(pid)}").stdout.strip() if pid.isdigit() and pid != "0" else ""
        found[node] = hardening_problems(props, user)
    return expect(not any(found.values()),
                  expected=f"{service} active on every node as a dedicated non-root user with NoNewPrivileges, "
                           "ProtectSystem=strict, ProtectHome, PrivateTmp and a MemoryMax",
                  found="; ".join(f"{n}: {', '.join(p) or 'hardened'}" for n, p in found.items()))


def firewall(lab: Lab) -> Verdict:
    """Each node's inference port answers the edge hosts and refuses (or drops) another lab host."""
    port, found, good = lab.ports["inference"], {}, True
    edge = _edges(lab)[0]
    for node in _nodes(lab):
        outsider = next((n for n in _nodes(lab) if n != node), None)
        url = _node_url(lab, node, "/health")
        probe = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 {url}"
        from_edge = lab.host(edge).run(probe).stdout.strip() or "000"
        from_outsider = (lab.host(outsider).run(probe).stdout.strip() or "000") if outsider else "000"
        good &= from_edge == "200" and from_outsider == "000"
        found[node] = (f"from {edge} {'200' if from_edge == '200' else 'no answer (' + from_edge + ')'}, "
                       f"from {outsider} " + ("refused or dropped" if from_outsider == "000" else f"answered {from_outsider}"))
    return expect(good, expected=f"port {port} of every node answering the edge hosts and closed to other lab hosts",
                  found="; ".join(f"{n}: {v}" for n, v in found.items()))


def api(lab: Lab) -> Verdict:
    """The API answers at the edge VIP: /health 200 and /v1/models naming the served model."""
    base = _api(lab)
    with _http(lab) as http:
        health = _status(http, f"{base}/health")
        model = _model(http, base) if health == "200" else ""
    return expect(health == "200" and model,
                  expected=f"200 from {base}/health and a model listed by {base}/v1/models",
                  found=f"/health {health}, model {model or 'none'}")


def both_nodes(lab: Lab) -> Verdict:
    """Every node is in the edge upstream's rotation and takes some of the requests sent to the VIP."""
    nodes = {n: lab.address(n) for n in _nodes(lab)}
    states, config_good = {}, True
    for edge in _edges(lab):
        root = _nginx_config(lab, edge)
        site = root if isinstance(root, str) else api_site(root, lab.ports["http"])
        if isinstance(site, str):
            states[edge], config_good = site, False
            continue
        found = rotation(site[2], nodes, lab.ports["inference"])
        config_good &= all(v == "in rotation" for v in found.values())
        states[edge] = ", ".join(f"{n} {v}" for n, v in found.items())
    served = _served_counts(lab, nodes)
    return expect(config_good and served and all(served.values()),
                  expected=f"every node in rotation on every edge host, and each answering some of "
                           f"{ROTATION_REQUESTS} requests to the VIP",
                  found="; ".join(f"{e}: {s}" for e, s in states.items())
                        + "; answered: " + (", ".join(f"{n} {c:g}" for n, c in served.items()) if served
                                            else "nothing through the VIP"))


def _served_counts(lab: Lab, nodes: dict[str, str]) -> dict[str, float]:
    """How many of ROTATION_REQUESTS small completions through the VIP each node finished ({} on failure)."""
    base = _api(lab)
    with _http(lab) as http:
        model = _model(http, base)
        if not model:
            return {}
        try:
            before = {n: success_count(http.get(_node_url(lab, n, "/metrics")).text) for n in nodes}
            body = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
            for _ in range(ROTATION_REQUESTS):
                http.post(f"{base}/v1/completions", json=body).raise_for_status()
            return {n: success_count(http.get(_node_url(lab, n, "/metrics")).text) - before[n] for n in nodes}
        except httpx.HTTPError:
            return {}


def streaming(lab: Lab) -> Verdict:
    """Tokens streamed through the VIP arrive as generated, and no edge host buffers the API's responses."""
    config = {}
    for edge in _edges(lab):
        root = _nginx_config(lab, edge)
        config[edge] = root if isinstance(root, str) else buffering_problem(root, lab.ports["http"])
    timed_ok, timing = _stream_through_vip(lab)
    bad = {e: p for e, p in config.items() if p}
    return expect(timed_ok and not bad,
                  expected="a streamed chat completion through the VIP whose tokens arrive spread over the "
                           "response, and the API location of every edge host unbuffered whatever the server sends",
                  found=f"{timing}; " + ("; ".join(f"{e}: {p}" for e, p in bad.items()) or "config unbuffered"))


def _stream_through_vip(lab: Lab) -> tuple[bool, str]:
    base = _api(lab)
    with _http(lab) as http:
        model = _model(http, base)
        if not model:
            return False, f"no model listed at {base}/v1/models"
        body = {"model": model, "stream": True, "max_tokens": STREAM_TOKENS, "ignore_eos": True, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from one to one hundred in words."}]}
        arrivals, started = [], time.monotonic()
        try:
            with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    return False, f"the stream answered {response.status_code}"
                for line in response.iter_lines():
                    if _has_content(line):
                        arrivals.append(time.monotonic() - started)
        except httpx.HTTPError as error:
            return False, f"the stream failed: {type(error).__name__}"
        return stream_timing(arrivals, time.monotonic() - started)


def _has_content(line: str) -> bool:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    try:
        choices = json.loads(line[6:]).get("choices") or []
    except ValueError:
        return False
    return any(c.get("delta", {}).get("content") for c in choices)


def vip_failover(lab: Lab) -> Verdict:
    """keepalived runs on every edge host and shares the VIP (BACKUP, nopreempt, unicast), tracking nginx and the nodes."""
    vip, edges = _vip(lab), _edges(lab)
    holders = drill.vip_holders(_run(lab), edges, vip)
    problems = {}
    for edge in edges:
        active = lab.host(edge).run("systemctl is-active keepalived").stdout.strip() or "unknown"
        enabled = lab.host(edge).run("systemctl is-enabled keepalived").stdout.strip() or "unknown"
        found = [] if (active, enabled) == ("active", "enabled") else [f"keepalived {active}/{enabled}"]
        conf, bodies = _keepalived(lab, edge)
        found += tracking_problems(conf, bodies, vip, lab.address(edge),
                                   [lab.address(e) for e in edges if e != edge], lab.ports["inference"],
                                   [lab.address(n) for n in _nodes(lab)])
        problems[edge] = found
    return expect(len(holders) == 1 and not any(problems.values()),
                  expected=f"{vip} on exactly one edge host; keepalived running and enabled on each, BACKUP with "
                           "nopreempt, unicast to the other edge hosts, tracking nginx and the nodes' health",
                  found=f"VIP on {', '.join(holders) or 'none'}; "
                        + "; ".join(f"{e}: {', '.join(p) or 'as wanted'}" for e, p in problems.items()))


def failover_drill(lab: Lab) -> Verdict:
    """The last failover drill of the platform ran against the current keepalived.conf, moved the VIP, short outage."""
    directory = lab.drills_dir or drill.drills_dir()
    last = drill.load_last_for(EDGE_GROUP, directory=directory)
    if last is None:
        return expect(False, expected=f"a failover drill result for the VIP {_vip(lab)} in {directory}",
                      found="no drill of the platform has run")
    current = drill.config_fingerprint(_run(lab), _edges(lab))
    same_config = last.get("config_sha256") == current
    outage = last.get("outage_s")
    good = same_config and last.get("recovered") and last.get("to_host") and outage is not None \
        and outage < MAX_OUTAGE_S
    return expect(good, expected=f"a drill against the current keepalived.conf of the edge hosts, the VIP moved, "
                                 f"an outage under {MAX_OUTAGE_S:g} s",
                  found=f"drill of {last.get('started_at', '?')} ({last.get('method', '?')}): "
                        f"{last.get('from_host')} -> {last.get('to_host')}, outage {outage} s, "
                        f"{last.get('failed')}/{last.get('requests')} failed, "
                        f"config {'unchanged since' if same_config else 'changed since (run the drill again)'}")
