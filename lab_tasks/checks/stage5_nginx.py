"""Checks for stage 5: nginx on the app hosts and a load balancer on the first lb host.

Behaviour first: real HTTP requests from the control host to the lab addresses. Config semantics
(balancing method, weights, failover settings, log format) come from `nginx -T`, which only reads.
"""
from __future__ import annotations

import shlex
from collections import Counter

from lab_tasks import httpprobe, nginxconf
from lab_tasks.checks import Lab, Verdict, expect

REQUESTS = 12


def _lb(lab: Lab) -> str:
    return lab.hosts("lb")[0]


def _lb_url(lab: Lab, port_name: str = "http", path: str = "/", scheme: str = "http") -> str:
    return httpprobe.url(lab.address(_lb(lab)), lab.ports[port_name], path, scheme)


def _spread(lab: Lab, url: str, count: int = REQUESTS) -> tuple[Counter, int]:
    """(answers per backend name or error, number of non-2xx answers) of `count` requests."""
    answers, failed = Counter(), 0
    with httpprobe.client() as http:
        for _ in range(count):
            reply = httpprobe.get(url, http)
            answers[reply.backend or reply.describe()] += 1
            failed += not reply.ok
    return answers, failed


def _lb_config(lab: Lab) -> nginxconf.Directive | str:
    """The parsed `nginx -T` of the lb host, or why it could not be read."""
    result = lab.host(_lb(lab)).run("nginx -T")
    if result.rc != 0:
        return f"`nginx -T` on {_lb(lab)} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}"
    return nginxconf.parse(result.stdout)


def _balancer(lab: Lab) -> tuple[nginxconf.Directive, nginxconf.Directive] | str:
    """(server block on the http port, the upstream it proxies to), or why there is none."""
    root = _lb_config(lab)
    if isinstance(root, str):
        return root
    upstreams = nginxconf.upstreams(root)
    for server in nginxconf.servers(root):
        if nginxconf.listens_on(server, lab.ports["http"]):
            for name in sorted(nginxconf.proxied_upstreams(server) & set(upstreams)):
                return server, upstreams[name]
    return f"no server on port {lab.ports['http']} of {_lb(lab)} proxies to an upstream block"


def _app_options(lab: Lab, upstream: nginxconf.Directive) -> dict[str, dict[str, str] | None]:
    """Each app host's server-line options in the upstream (None when it is not listed)."""
    options = nginxconf.server_options(upstream)
    found = {}
    for name in lab.hosts("app"):
        keys = [k for k in options if k.split(":")[0] in (lab.address(name), name)]
        found[name] = options[keys[0]] if keys else None
    return found


def backends(lab: Lab) -> Verdict:
    """Every app host serves a page that names it."""
    named = {}
    for name in lab.hosts("app"):
        reply = httpprobe.get(httpprobe.url(lab.address(name), lab.ports["http"]))
        named[name] = reply.backend or f"no backend name ({reply.describe()})"
    return expect(all(named[n] == n for n in named),
                  expected="each app host answering with a page containing `opslab backend <its name>`",
                  found=", ".join(f"{n}: {v}" for n, v in named.items()))


def distribution(lab: Lab) -> Verdict:
    """Requests to the lb host reach every app host, and all succeed."""
    answers, failed = _spread(lab, _lb_url(lab))
    apps = lab.hosts("app")
    return expect(all(answers[a] for a in apps) and failed == 0,
                  expected=f"{REQUESTS} requests to http://{lab.address(_lb(lab))}/ all answered, by each of "
                           f"{', '.join(apps)}",
                  found=", ".join(f"{k}: {v}" for k, v in answers.most_common()) + f"; {failed} failed")


def balancing(lab: Lab) -> Verdict:
    """The upstream uses least_conn and weights the first app host above the second."""
    found = _balancer(lab)
    if isinstance(found, str):
        return expect(False, expected="an upstream behind the http site", found=found)
    upstream = found[1]
    options = _app_options(lab, upstream)
    weights = {name: int((opts or {}).get("weight", 1)) for name, opts in options.items()}
    first, second = lab.hosts("app")[:2]
    method = "least_conn" if upstream.find("least_conn") else "round robin or other"
    return expect(method == "least_conn" and weights[first] > weights[second] and None not in options.values(),
                  expected=f"upstream {upstream.args[0]} with least_conn, listing every app host, "
                           f"{first} weighted above {second}",
                  found=f"method {method}; listed {[n for n, o in options.items() if o is not None]}; weights {weights}")


def failover(lab: Lab) -> Verdict:
    """Every app server line sets max_fails and fail_timeout, and failed requests go to the next server."""
    found = _balancer(lab)
    if isinstance(found, str):
        return expect(False, expected="an upstream behind the http site", found=found)
    server, upstream = found
    options = _app_options(lab, upstream)
    unguarded = [n for n, o in options.items() if not o or not {"max_fails", "fail_timeout"} <= set(o)]
    next_upstream = sorted({word for args in nginxconf.directive_values(server, "proxy_next_upstream") for word in args})
    retries_5xx = any(word.startswith("http_5") for word in next_upstream)
    return expect(not unguarded and {"error", "timeout"} <= set(next_upstream) and retries_5xx,
                  expected="max_fails and fail_timeout on every app server; proxy_next_upstream with error, "
                           "timeout and at least one http_5xx",
                  found=f"servers without both settings: {unguarded or 'none'}; "
                        f"proxy_next_upstream: {' '.join(next_upstream) or 'not set'}")


def access_log(lab: Lab) -> Verdict:
    """An access log with a format that records the upstream address and response time names both backends."""
    root = _lb_config(lab)
    if isinstance(root, str):
        return expect(False, expected="a readable nginx config", found=root)
    formats = nginxconf.log_formats(root)
    paths = sorted({path for path, fmt in nginxconf.access_logs(root)
                    if all(v in formats.get(fmt, "") for v in ("$upstream_addr", "$upstream_response_time"))})
    if not paths:
        return expect(False, expected="an access_log whose log_format has $upstream_addr and $upstream_response_time",
                      found=f"formats {sorted(formats) or 'none'} and none of them used with both")
    _spread(lab, _lb_url(lab), count=6)
    host = lab.host(_lb(lab))
    tail = "\n".join(host.run(f"tail -n 300 {p}").stdout for p in paths)
    seen = {name: lab.address(name) in tail for name in lab.hosts("app")}
    return expect(all(seen.values()), expected=f"{', '.join(paths)} naming every app host's address",
                  found=", ".join(f"{n} {'logged' if s else 'missing'}" for n, s in seen.items()))


def health(lab: Lab) -> Verdict:
    """The lb host answers 200 on its health endpoint."""
    path = lab.vars.get("stage5_nginx_health_path", "/health")
    target = _lb_url(lab, "health", path)
    reply = httpprobe.get(target)
    return expect(reply.status == 200, expected=f"200 from {target}", found=reply.describe())


def tls(lab: Lab) -> Verdict:
    """HTTPS on the lb host answers with a backend page, with a self-signed certificate."""
    reply = httpprobe.get(_lb_url(lab, "https", scheme="https"))
    subject, issuer = _certificate(lab)
    return expect(reply.ok and reply.backend and subject and subject == issuer,
                  expected="https answering with a backend page, certificate issuer = subject (self-signed)",
                  found=f"{reply.describe()} naming {reply.backend or 'no backend'}; "
                        f"subject {subject or '?'}, issuer {issuer or '?'}")


def _certificate(lab: Lab) -> tuple[str, str]:
    """(subject, issuer) of the certificate the https server uses, read on the lb host."""
    root = _lb_config(lab)
    if isinstance(root, str):
        return "", ""
    for server in nginxconf.servers(root):
        paths = server.find("ssl_certificate")
        if nginxconf.listens_on(server, lab.ports["https"]) and paths:
            out = lab.host(_lb(lab)).run(f"openssl x509 -noout -subject -issuer -in {shlex.quote(paths[0].args[0])}").stdout
            fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            return fields.get("subject", "").strip(), fields.get("issuer", "").strip()
    return "", ""
