"""Recorded host states of stage 5 (nginx load balancing): the solved lb1 and the near misses a learner reaches.

lb1's `nginx -T`, files and command output are recorded; HTTP from the control host is a FakeHttp that
answers each URL from a list (cycled, so twelve requests to lb1 alternate between the backends).
"""
from __future__ import annotations

import itertools
import shlex

from hoststates import FakeFile, FakeHost, FakeInventory, NearMiss, fake_lab

from lab_tasks.httpprobe import Reply

STAGE = "stage5"
LB, APP1, APP2 = "10.213.7.11", "10.213.7.21", "10.213.7.22"
INVENTORY = {"lb": {"lb1": LB, "lb2": "10.213.7.12"}, "app": {"app1": APP1, "app2": APP2}}
ACCESS_LOG = "/var/log/nginx/balancer.log"  # a learner's own names, not the reference solution's
CERT, KEY = "/etc/ssl/lb1/cert.pem", "/etc/ssl/lb1/key.pem"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUB\n-----END CERTIFICATE-----\n"
OTHER_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZ\n-----END CERTIFICATE-----\n"
PAGE = "<h1>opslab backend {}</h1>"
STOCK = "<title>Welcome to nginx!</title>"


def cmd(*argv: str) -> str:
    """The command line lab_tasks.checks.common.run sends for `argv` (FakeHost drops its locale prefix)."""
    return " ".join(shlex.quote(a) for a in argv)


def nginx_t(*, method="least_conn;", app1="weight=2 max_fails=2 fail_timeout=10s",
            app2="max_fails=2 fail_timeout=10s", next_upstream="proxy_next_upstream error timeout http_502 http_503;",
            location_extra="", log_format="upstream=$upstream_addr upstream_time=$upstream_response_time",
            access_log=f"access_log {ACCESS_LOG} upstreamlog;", health='return 200 "ok\\n";',
            tls=f"ssl_certificate {CERT};\n    ssl_certificate_key {KEY};") -> str:
    """lb1's `nginx -T`, shaped like the reference solution, with the parts a near miss changes."""
    return f"""nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
http {{
    log_format upstreamlog '$remote_addr [$time_local] "$request" $status '
                           '{log_format}';
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}}
# configuration file /etc/nginx/conf.d/upstreams.conf:
upstream opslab_app {{
    {method}
    server {APP1}:80 {app1};
    server {APP2}:80 {app2};
    keepalive 16;
}}
# configuration file /etc/nginx/sites-enabled/lb.conf:
server {{
    listen 80 default_server;
    listen 443 ssl default_server;
    {tls}
    {access_log}
    location / {{
        proxy_pass http://opslab_app;
        {next_upstream}
        {location_extra}
    }}
}}
# configuration file /etc/nginx/sites-enabled/health.conf:
server {{
    listen 8081;
    location = /health {{
        default_type text/plain;
        {health}
    }}
}}
"""


class FakeHttp:
    """HTTP from the control host: each URL answers from its list of replies in turn."""

    def __init__(self, replies: dict[str, list[Reply]]):
        self.replies = {url: itertools.cycle(answers) for url, answers in replies.items()}

    def __call__(self, url: str) -> Reply:
        if url not in self.replies:
            raise AssertionError(f"unrecorded URL: {url}")
        return next(self.replies[url])


def http(**changes: list[Reply]) -> FakeHttp:
    """The solved lab's HTTP answers; `changes` replace some ({"lb": [...], "app2": [...], ...})."""
    balanced = [Reply(200, PAGE.format("app1")), Reply(200, PAGE.format("app2"))]
    replies = {
        "app1": [Reply(200, PAGE.format("app1"))],
        "app2": [Reply(200, PAGE.format("app2"))],
        "lb": balanced,
        "https": balanced,
        "health": [Reply(200, "ok\n")],
    } | changes
    urls = {"app1": f"http://{APP1}/", "app2": f"http://{APP2}/", "lb": f"http://{LB}/",
            "https": f"https://{LB}/", "health": f"http://{LB}:8081/health"}
    return FakeHttp({urls[name]: answers for name, answers in replies.items()})


def lb1(*, config: str | None = None, key_mode=0o600, key_user="root", issuer="CN = lb1", served=PEM,
        new_log_lines: str | None = None) -> FakeHost:
    """lb1 as recorded on the solved sandbox, with the parts a near miss changes."""
    new = new_log_lines if new_log_lines is not None else "".join(
        f'10.213.7.1 [02/Dec/2026] "GET / HTTP/1.1" 200 upstream={a}:80 upstream_time=0.001\n'
        for a in [APP1, APP2] * 6)
    return FakeHost(
        files={ACCESS_LOG: "old line\n" * 3, CERT: PEM, KEY: FakeFile("KEY", mode=key_mode, user=key_user)},
        commands={
            cmd("nginx", "-T"): config if config is not None else nginx_t(),
            cmd("tail", "-n", "+4", ACCESS_LOG): new,
            cmd("openssl", "x509", "-noout", "-subject", "-issuer", "-in", CERT): f"subject=CN = lb1\nissuer={issuer}\n",
            cmd("sh", "-c", "openssl s_client -connect 127.0.0.1:443 </dev/null"): f"CONNECTED(00000003)\n{served}",
        })


def lab(host: FakeHost | None = None, replies: FakeHttp | None = None):
    """A stage 5 Lab over lb1 (the checks reach the app hosts only by HTTP)."""
    built = fake_lab(STAGE, {"lb1": host or lb1()}, inventory=FakeInventory(INVENTORY))
    built.http_get = replies or http()
    return built


def solved(tmp_path):
    return lab()


def _miss(task: str, mistake: str, says, host: FakeHost | None = None, replies: FakeHttp | None = None) -> NearMiss:
    return NearMiss(task, mistake, lambda tmp_path: lab(host, replies), says)


NEAR_MISSES = [
    _miss("backends", "app2 still serves the stock page", ("app2", "naming no backend"),
          replies=http(app2=[Reply(200, STOCK)])),
    _miss("backends", "app2's page names app1 (copied without editing)", "app2: a page naming app1",
          replies=http(app2=[Reply(200, PAGE.format("app1"))])),
    _miss("backends", "nginx is stopped on app1", "app1: no answer", replies=http(app1=[Reply(None, error="refused")])),
    _miss("distribution", "app2 is a backup server, so app1 answers everything", "app2 never answered",
          replies=http(lb=[Reply(200, PAGE.format("app1"))])),
    _miss("distribution", "lb1 still serves the stock page", "never answered", replies=http(lb=[Reply(200, STOCK)])),
    _miss("balancing", "no balancing method (round robin)", "round robin",
          lb1(config=nginx_t(method=""))),
    _miss("balancing", "equal weights", "app1 has weight 1 and app2 weight 1",
          lb1(config=nginx_t(app1="max_fails=2 fail_timeout=10s"))),
    _miss("balancing", "the weight on the wrong backend", "app1 has weight 1 and app2 weight 2",
          lb1(config=nginx_t(app1="max_fails=2 fail_timeout=10s", app2="weight=2 max_fails=2 fail_timeout=10s"))),
    _miss("balancing", "app2 marked backup", "app2 is marked backup",
          lb1(config=nginx_t(app2="backup max_fails=2 fail_timeout=10s"))),
    _miss("failover", "max_fails=0 turns failure counting off", "turns failure counting off",
          lb1(config=nginx_t(app2="max_fails=0 fail_timeout=10s"))),
    _miss("failover", "no fail_timeout on app2", "app2's server line does not say for how long",
          lb1(config=nginx_t(app2="max_fails=2"))),
    _miss("failover", "retries only on errors and timeouts (5xx goes to the client)", "5xx answer",
          lb1(config=nginx_t(next_upstream="proxy_next_upstream error timeout;"))),
    _miss("failover", "retry settings in another location, not where / is proxied", "5xx answer",
          lb1(config=nginx_t(next_upstream="", location_extra="} location /api { proxy_pass http://opslab_app; "
                                                               "proxy_next_upstream error timeout http_502;"))),
    _miss("failover", "one try per request", "only one backend may be tried",
          lb1(config=nginx_t(location_extra="proxy_next_upstream_tries 1;"))),
    _miss("failover", "retrying switched off", "switched off", lb1(config=nginx_t(next_upstream="proxy_next_upstream off;"))),
    _miss("access-log", "the format records the whole request time, not the backend's",
          "no access log uses a format with both",
          lb1(config=nginx_t(log_format="upstream=$upstream_addr request_time=$request_time"))),
    _miss("access-log", "the balancing site logs with the default format", "no access log uses a format",
          lb1(config=nginx_t(access_log=f"access_log {ACCESS_LOG};"))),
    _miss("access-log", "the log exists but the balancing site writes nothing new to it", "never named",
          lb1(new_log_lines="")),
    _miss("health", "health endpoint proxied to the backends", ("passes requests on to a backend", "whole page"),
          lb1(config=nginx_t(health="proxy_pass http://opslab_app;")),
          http(health=[Reply(200, PAGE.format("app1"))])),
    _miss("health", "health answers with an empty body", "empty body", replies=http(health=[Reply(200, "")])),
    _miss("health", "health only on port 80", "answers 404", replies=http(health=[Reply(404, "")])),
    _miss("tls", "the private key is world-readable", ("readable by its group and everyone", "only root can read it"),
          lb1(key_mode=0o644)),
    _miss("tls", "the private key is group-readable", "readable by its group", lb1(key_mode=0o640)),
    _miss("tls", "a certificate signed by another CA", "not by itself", lb1(issuer="CN = Some CA")),
    _miss("tls", "nginx serves an older certificate than the file names", "serves a different certificate",
          lb1(served=OTHER_PEM)),
    _miss("tls", "no https site", "no site listens on port 443",
          lb1(config=nginx_t(tls="").replace("listen 443 ssl default_server;", "")),
          http(https=[Reply(None, error="ConnectError: refused")])),
]
