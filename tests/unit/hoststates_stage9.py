"""Recorded host states of the capstone: the platform as `lab solve capstone` leaves it, and the near
misses a learner reaches while repairing what `lab start capstone` broke.

The HTTP side (the VIP, the nodes' /metrics) is an httpx MockTransport over a small model of the platform:
which nodes nginx sends to, whether the VIP answers, whether streamed chunks arrive spread out.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from hoststates import FakeFile, FakeHost, FakeInventory, NearMiss, Result, fake_lab

STAGE = "stage9"
EDGES = {"edge1": "10.213.7.61", "edge2": "10.213.7.62"}
NODES = {"infer1": "10.213.7.71", "infer2": "10.213.7.72"}
VIP = "10.213.7.200"
SERVICE = "opslab-inference"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
NODES_SCRIPT_PATH = "/usr/local/sbin/opslab-any-inference-node-healthy"
SHOW = (f"systemctl show {SERVICE} -p ActiveState,User,MainPID,MemoryMax,NoNewPrivileges,ProtectSystem,"
        "ProtectHome,PrivateTmp")
HARDENED = {"ActiveState": "active", "User": "opslab-inference", "MainPID": "4242", "MemoryMax": "3221225472",
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}
NODES_SCRIPT = """#!/bin/sh
for url in 'http://10.213.7.71:8000/health' 'http://10.213.7.72:8000/health' ; do
    if /usr/bin/curl -fsS -o /dev/null --max-time 1 "$url"; then
        exit 0
    fi
done
exit 1
"""
API_LOCATION = """proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 2;
        proxy_connect_timeout 2s;
        proxy_read_timeout 600s;
        proxy_buffering off;
        proxy_cache off;
        proxy_send_timeout 600s;"""


def upstream_servers(infer2_option: str = "") -> str:
    return ("server 10.213.7.71:8000 max_fails=2 fail_timeout=10s;\n"
            f"    server 10.213.7.72:8000 max_fails=2 fail_timeout=10s{infer2_option};")


def nginx_t(servers: str | None = None, location: str = API_LOCATION, health_extra: str = "",
            http_extra: str = "") -> str:
    """`nginx -T` of an edge host as the edge role renders it."""
    return f"""nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
user www-data;
worker_processes auto;
events {{
    worker_connections 768;
}}
http {{
    sendfile on;
    gzip on;
    {http_extra}
    include conf.d/*.conf;
    include sites-enabled/*;
}}

# configuration file /etc/nginx/conf.d/upstreams.conf:
upstream opslab_inference {{
    least_conn;
    {servers or upstream_servers()}
    keepalive 32;
}}

# configuration file /etc/nginx/sites-enabled/api.conf:
server {{
    listen 80 default_server;
    server_name _;
    access_log /var/log/nginx/edge.access.log edgelog;
    client_max_body_size 16m;
    add_header X-Served-By $hostname always;

    location / {{
        proxy_pass http://opslab_inference;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        {location}
    }}
}}

# configuration file /etc/nginx/sites-enabled/health.conf:
server {{
    listen 8081;
    server_name _;
    {health_extra}

    location = /health {{
        default_type text/plain;
        access_log off;
        return 200 'ok\\n';
    }}
}}
"""


def keepalived_conf(host: str, track: tuple[str, ...] = ("chk_edge_nginx", "chk_inference_nodes"),
                    nopreempt: bool = True, vip: str = VIP) -> str:
    peer = [a for h, a in EDGES.items() if h != host][0]
    tracked = "\n        ".join(track)
    priority = 250 if host == "edge1" else 200
    return f"""# Ansible managed
global_defs {{
    router_id {host}
    script_user root
    enable_script_security
}}

vrrp_script chk_edge_nginx {{
    script "/usr/bin/curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8081/health"
    interval 1
    timeout 1
    fall 1
    rise 2
}}

vrrp_script chk_inference_nodes {{
    script "{NODES_SCRIPT_PATH}"
    interval 2
    timeout 3
    fall 2
    rise 1
}}

vrrp_instance VI_EDGE {{
    state BACKUP
    interface host0
    virtual_router_id 61
    priority {priority}
    advert_int 1
    {'nopreempt' if nopreempt else ''}
    authentication {{
        auth_type PASS
        auth_pass Xy12ab34
    }}
    unicast_src_ip {EDGES[host]}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {vip}/24 dev host0
    }}
    track_script {{
        {tracked}
    }}
    notify /usr/local/sbin/keepalived-notify
}}
"""


def curl(address: str) -> str:
    return f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://{address}:8000/health"


@dataclass
class Platform:
    """What the recorded platform looks like from the hosts and from the control host."""

    nginx: dict[str, str] = field(default_factory=lambda: {e: nginx_t() for e in EDGES})
    keepalived: dict[str, str] = field(default_factory=lambda: {e: keepalived_conf(e) for e in EDGES})
    keepalived_state: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {e: ("active", "enabled") for e in EDGES})
    vip_holder: str | None = "edge1"
    service: dict[str, dict[str, str]] = field(default_factory=lambda: {n: dict(HARDENED) for n in NODES})
    process_user: dict[str, str] = field(default_factory=lambda: {n: "opslab-inference" for n in NODES})
    open_to_lab: tuple[str, ...] = ()      # nodes whose port answers any lab host
    answering: tuple[str, ...] = tuple(NODES)  # nodes nginx sends requests to
    chunk_gap_s: float = 0.01              # time between streamed chunks as the client sees them
    chunks_at_end: bool = False            # buffered: every chunk arrives at once at the end
    vip_answers: bool = True
    drill: dict | None = field(default_factory=lambda: {"outage_s": 0.8})

    def hosts(self) -> dict[str, FakeHost]:
        hosts = {}
        for edge, address in EDGES.items():
            holds = f"host0@if5 UP {address}/24 " + (f"{VIP}/24 " if self.vip_holder == edge else "")
            commands = {
                "nginx -T": self.nginx[edge],
                "systemctl is-active keepalived": Result(0 if self.keepalived_state[edge][0] == "active" else 3,
                                                         self.keepalived_state[edge][0] + "\n"),
                "systemctl is-enabled keepalived": Result(0 if self.keepalived_state[edge][1] == "enabled" else 1,
                                                          self.keepalived_state[edge][1] + "\n"),
                "ip -br addr": f"lo UNKNOWN 127.0.0.1/8\n{holds}\n",
                f"sha256sum {KEEPALIVED_CONF}": f"{_sha(self.keepalived[edge])}  {KEEPALIVED_CONF}\n",
            }
            commands.update({curl(a): "200" for a in NODES.values()})
            hosts[edge] = FakeHost(files={KEEPALIVED_CONF: FakeFile(self.keepalived[edge], mode=0o640),
                                          NODES_SCRIPT_PATH: FakeFile(NODES_SCRIPT, mode=0o755)},
                                   commands=commands)
        for node in NODES:
            props = "".join(f"{k}={v}\n" for k, v in self.service[node].items())
            other = [a for n, a in NODES.items() if n != node][0]
            other_name = [n for n in NODES if n != node][0]
            hosts[node] = FakeHost(commands={
                SHOW: props,
                f"stat -c %U /proc/{self.service[node]['MainPID']}": self.process_user[node] + "\n",
                curl(other): Result(0, "200") if other_name in self.open_to_lab else Result(28, "000"),
            })
        return hosts

    def transport(self) -> httpx.MockTransport:
        finished = {n: 0 for n in NODES}
        turn = [0]

        def handle(request: httpx.Request) -> httpx.Response:
            host, path = request.url.host, request.url.path
            if host == VIP and not self.vip_answers:
                raise httpx.ConnectError("no route to host", request=request)
            if path == "/metrics":
                node = next(n for n, a in NODES.items() if a == host)
                return httpx.Response(200, text=f'vllm:request_success_total{{finished_reason="length"}} '
                                                f'{finished[node]}.0\n')
            if path == "/health":
                return httpx.Response(200, json={"status": "ok"})
            if path == "/v1/models":
                return httpx.Response(200, json={"object": "list", "data": [{"id": "smollm2-135m"}]})
            node = self.answering[turn[0] % len(self.answering)]
            turn[0] += 1
            finished[node] += 1
            if path == "/v1/completions":
                return httpx.Response(200, json={"choices": [{"text": "!"}]})
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(self))

        return httpx.MockTransport(handle)

    def lab(self, tmp_path: Path):
        groups = {"edge": EDGES, "inference": NODES}
        lab = fake_lab(STAGE, self.hosts(), vars={"capstone_service": SERVICE},
                       inventory=FakeInventory(groups, vip="10.213.7.100"))
        lab.http_transport = self.transport()
        lab.drills_dir = tmp_path / "drills"
        lab.drills_dir.mkdir(parents=True, exist_ok=True)
        if self.drill is not None:
            result = {"vip": VIP, "method": "stop-nginx", "from_host": "edge1", "to_host": "edge2",
                      "started_at": "2026-12-02T10:30:00+00:00", "recovered": True, "requests": 400, "failed": 12,
                      "config_sha256": {e: _sha(c) for e, c in Platform().keepalived.items()}, **self.drill}
            (lab.drills_dir / "last-failover-edge.json").write_text(json.dumps(result))
        return lab


class ChunkStream(httpx.SyncByteStream):
    """SSE chunks of a streamed chat completion, spread out or all at the end (buffered)."""

    def __init__(self, platform: Platform):
        self.platform = platform

    def __iter__(self):
        chunks = [f'data: {json.dumps({"choices": [{"delta": {"content": f"word{i} "}}]})}\n\n'.encode()
                  for i in range(8)] + [b"data: [DONE]\n\n"]
        if self.platform.chunks_at_end:
            time.sleep(self.platform.chunk_gap_s * len(chunks))
            yield b"".join(chunks)
            return
        for chunk in chunks:
            time.sleep(self.platform.chunk_gap_s)
            yield chunk


def _sha(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()


def solved(tmp_path: Path):
    return Platform().lab(tmp_path)


def _miss(task: str, mistake: str, says, **changes) -> NearMiss:
    return NearMiss(task, mistake, lambda tmp_path: replace(Platform(), **changes).lab(tmp_path), says)


DEBUG_DROPIN = {**HARDENED, "User": "", "NoNewPrivileges": "no", "ProtectSystem": "no", "ProtectHome": "no",
                "PrivateTmp": "no", "MemoryMax": "infinity"}

NEAR_MISSES = [
    _miss("hardened", "debug drop-in left on infer2", ("infer2", "runs as root", "no MemoryMax"),
          service={"infer1": dict(HARDENED), "infer2": DEBUG_DROPIN},
          process_user={"infer1": "opslab-inference", "infer2": "root"}),
    _miss("hardened", "ProtectSystem=full instead of strict", "ProtectSystem=full",
          service={n: {**HARDENED, "ProtectSystem": "full"} for n in NODES}),
    _miss("hardened", "service stopped while editing", "not running (inactive)",
          service={"infer1": {**HARDENED, "ActiveState": "inactive", "MainPID": "0"}, "infer2": dict(HARDENED)}),
    _miss("firewall", "port open to every lab host", ("infer1", "from infer2 answered 200"),
          open_to_lab=("infer1",)),
    _miss("api", "keepalived stopped on both edges", ("/health ConnectError", "model none"),
          vip_answers=False, vip_holder=None),
    _miss("both-nodes", "infer2 left marked down", ("infer2 marked down", "infer2 0"),
          nginx={e: nginx_t(servers=upstream_servers(" down")) for e in EDGES}, answering=("infer1",)),
    _miss("both-nodes", "infer2 made a backup server", "infer2 backup only",
          nginx={e: nginx_t(servers=upstream_servers(" backup")) for e in EDGES}, answering=("infer1",)),
    _miss("both-nodes", "infer2 fixed on edge1 only", "edge2: infer1 in rotation, infer2 marked down",
          nginx={"edge1": nginx_t(), "edge2": nginx_t(servers=upstream_servers(" down"))}),
    _miss("streaming", "proxy_buffering off only in the health server", "proxy_buffering is on (the default)",
          nginx={e: nginx_t(location="proxy_ignore_headers X-Accel-Buffering;", health_extra="proxy_buffering off;")
                 for e in EDGES}, chunks_at_end=True),
    _miss("streaming", "X-Accel-Buffering no longer ignored but buffering still on", "edge1: location /",
          nginx={"edge1": nginx_t(location="proxy_read_timeout 600s;"), "edge2": nginx_t()}),
    _miss("streaming", "chunks arrive together at the end", "content chunks", chunks_at_end=True),
    _miss("vip-failover", "nodes' script installed but not tracked",
          "no tracked script checks the inference nodes' health",
          keepalived={e: keepalived_conf(e, track=("chk_edge_nginx",)) for e in EDGES}),
    _miss("vip-failover", "keepalived fixed but left disabled on edge2", "edge2: keepalived active/disabled",
          keepalived_state={"edge1": ("active", "enabled"), "edge2": ("active", "disabled")}),
    _miss("vip-failover", "keepalived stopped everywhere", ("VIP on none", "keepalived inactive/disabled"),
          vip_holder=None, keepalived_state={e: ("inactive", "disabled") for e in EDGES}),
    _miss("failover-drill", "drill run before the last keepalived change", "changed since",
          keepalived={"edge1": keepalived_conf("edge1") + "\n# tuned\n", "edge2": keepalived_conf("edge2")}),
    _miss("failover-drill", "no drill yet", "no drill of the platform has run", drill=None),
    _miss("failover-drill", "drill with a long outage", "outage 5.2 s", drill={"outage_s": 5.2}),
]
