"""Checks for stage 5: nginx on the app hosts and a load balancer on the first lb host.

Behaviour first: real HTTP requests from the control host to the lab addresses (`Lab.http_get`).
Config semantics (balancing method, weights, failover settings, log format) come from `nginx -T`,
which only reads, and follow nginx's own inheritance: a setting counts where nginx applies it.
"""
from __future__ import annotations

import re
from collections import Counter

from lab_tasks import httpprobe
from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read, run
from lab_tasks.parsers import nginx
from lab_tasks.parsers.nginx import Directive

REQUESTS = 12
RETRIED_STATUSES = {"http_500", "http_502", "http_503", "http_504"}
MAX_FAILS = range(2, 11)  # "a couple of errors": 1 marks a backend dead on one slow answer, 0 never does
HEALTH_BODY_MAX = 200
PEM = re.compile(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----")


def _lb(lab: Lab) -> str:
    return lab.hosts("lb")[0]


def _lb_url(lab: Lab, port_name: str = "http", path: str = "/", scheme: str = "http") -> str:
    return httpprobe.url(lab.address(_lb(lab)), lab.ports[port_name], path, scheme)


def _spread(lab: Lab, url: str, count: int = REQUESTS) -> tuple[Counter, int]:
    """(answers per backend name or error, number of non-2xx answers) of `count` requests."""
    answers, failed = Counter(), 0
    for _ in range(count):
        reply = lab.http_get(url)
        answers[reply.backend or (f"a page naming no backend ({reply.describe()})" if reply.status
                                  else f"no answer ({reply.describe()})")] += 1
        failed += not reply.ok
    return answers, failed


def _lb_config(lab: Lab) -> Directive | str:
    """The parsed `nginx -T` of the lb host, or why it could not be read."""
    result = run(lab.host(_lb(lab)), "nginx", "-T")
    if result.rc != 0:
        return f"nginx on {_lb(lab)} rejects its configuration: {(result.stderr.strip().splitlines() or ['?'])[-1]}"
    return nginx.parse(result.stdout)


class Balancer:
    """The lb host's balancing site as nginx loaded it: the config, the server on the http port, its upstream."""

    def __init__(self, root: Directive, server: Directive, upstream: Directive):
        self.root, self.server, self.upstream = root, server, upstream
        self.name = upstream.args[0]
        self.locations = nginx.proxying_locations(server, self.name)

    def setting(self, name: str) -> list[str] | None:
        """A proxy setting as it applies where requests go to the upstream (location, else server, else http)."""
        return nginx.effective(self.root, self.locations[0], name)


def _balancer(lab: Lab) -> Balancer | str:
    """The balancing site, or why there is none (in words)."""
    root = _lb_config(lab)
    if isinstance(root, str):
        return root
    site = nginx.balancing_site(root, lab.ports["http"])
    if site:
        return Balancer(root, *site)
    return f"no site on port {lab.ports['http']} of {_lb(lab)} passes requests to an upstream group"


def _app_lines(lab: Lab, upstream: Directive) -> dict[str, dict[str, str] | None]:
    """Each app host's server-line options in the upstream (None when it is not listed)."""
    options = nginx.server_options(upstream)
    found = {}
    for name in lab.hosts("app"):
        keys = [k for k in options if k.split(":")[0] in (lab.address(name), name)]
        found[name] = options[keys[0]] if keys else None
    return found


def backends(lab: Lab) -> Verdict:
    """Every app host serves a page that names it."""
    found = {}
    for name in lab.hosts("app"):
        reply = lab.http_get(httpprobe.url(lab.address(name), lab.ports["http"]))
        if not reply.status:
            found[name] = f"no answer ({reply.describe()})"
        elif reply.backend == name:
            found[name] = "its own page"
        elif reply.backend:
            found[name] = f"a page naming {reply.backend}"
        else:
            found[name] = f"a page naming no backend ({reply.describe()}; the stock welcome page?)"
    return expect(all(v == "its own page" for v in found.values()),
                  expected="each app host answering on port 80 with a page that says `opslab backend <its name>`",
                  found=", ".join(f"{n}: {v}" for n, v in found.items()))


def distribution(lab: Lab) -> Verdict:
    """Requests to the lb host reach every app host, and all succeed."""
    answers, failed = _spread(lab, _lb_url(lab))
    apps = lab.hosts("app")
    missing = [a for a in apps if not answers[a]]
    return expect(not missing and failed == 0,
                  expected=f"{REQUESTS} requests to http://{lab.address(_lb(lab))}/ all answered, by each of "
                           f"{', '.join(apps)}",
                  found=", ".join(f"{k}: {v}" for k, v in answers.most_common()) + f"; {failed} failed"
                        + (f"; {', '.join(missing)} never answered" if missing else ""))


def balancing_problems(lab: Lab, upstream: Directive) -> list[str]:
    """What keeps the upstream from least connections over every app host with app1 weighted above app2."""
    problems = []
    methods = [d.name for d in upstream.children if d.name in ("least_conn", "ip_hash", "hash", "random",
                                                                  "least_time")]
    if methods != ["least_conn"]:
        problems.append(f"the upstream balances by {' and '.join(methods) or 'round robin (no method set)'}; "
                        "the goal asks for least connections")
    lines = _app_lines(lab, upstream)
    for name, options in lines.items():
        if options is None:
            problems.append(f"{name} is not in the upstream")
        elif {"backup", "down"} & set(options):
            problems.append(f"{name} is marked {' and '.join(sorted({'backup', 'down'} & set(options)))}, "
                            "so it takes no share of the requests")
    weights = {n: (o or {}).get("weight", "1") for n, o in lines.items()}
    first, second = lab.hosts("app")[:2]
    if all(w.isdigit() for w in weights.values()) and int(weights[first]) <= int(weights[second]):
        problems.append(f"{first} has weight {weights[first]} and {second} weight {weights[second]}; "
                        f"the goal asks for {first} above {second}")
    return problems


def balancing(lab: Lab) -> Verdict:
    """The upstream uses least_conn and weights the first app host above the second."""
    found = _balancer(lab)
    first, second = lab.hosts("app")[:2]
    expected = f"least connections over every app host, {first} weighted above {second}"
    if isinstance(found, str):
        return expect(False, expected=expected, found=found)
    problems = balancing_problems(lab, found.upstream)
    return expect(not problems, expected=expected, found="; ".join(problems) or "that")


def failover_problems(lab: Lab, balancer: Balancer) -> list[str]:
    """What keeps the balancer from marking dead backends and retrying failed requests elsewhere."""
    problems = []
    for name, options in _app_lines(lab, balancer.upstream).items():
        options = options or {}
        fails, timeout = options.get("max_fails"), options.get("fail_timeout")
        if fails is None or timeout is None:
            missing = [w for w, v in (("how many errors", fails), ("for how long", timeout)) if v is None]
            problems.append(f"{name}'s server line does not say {' or '.join(missing)} it is marked failed")
        elif fails == "0":
            problems.append(f"{name}'s server line sets the error count to 0, which turns failure counting off")
        elif not fails.isdigit() or int(fails) not in MAX_FAILS:
            problems.append(f"{name} is marked failed after {fails} errors; the goal asks for a couple")
        elif not nginx.seconds(timeout):
            problems.append(f"{name} stays out for {timeout}; the goal asks for a while (more than 0 s)")
    retry = balancer.setting("proxy_next_upstream") or ["error", "timeout"]  # nginx's default
    wanted = {"error": "a refused connection", "timeout": "a timeout"}
    if "off" in retry:
        problems.append("retrying on the next backend is switched off")
    else:
        problems += [f"a request that fails with {words} is not retried on the next backend"
                     for word, words in wanted.items() if word not in retry]
        if not RETRIED_STATUSES & set(retry):
            problems.append("a 5xx answer from a backend goes back to the client instead of being retried")
    if (balancer.setting("proxy_next_upstream_tries") or ["0"])[0] == "1":
        problems.append("only one backend may be tried per request, so nothing is ever retried")
    return problems


def failover(lab: Lab) -> Verdict:
    """Every app server line marks a backend failed after a couple of errors, and failures go to the next one."""
    expected = ("each backend marked failed for a while after a couple of errors, and errors, timeouts and "
                "5xx answers retried on the next backend")
    found = _balancer(lab)
    if isinstance(found, str):
        return expect(False, expected=expected, found=found)
    problems = failover_problems(lab, found)
    return expect(not problems, expected=expected, found="; ".join(problems) or "that")


def upstream_formats(root: Directive) -> dict[str, str]:
    """The log formats that record both the backend's address and its response time."""
    return {name: text for name, text in nginx.log_formats(root).items()
            if "$upstream_addr" in text and "$upstream_response_time" in text}


def access_log(lab: Lab) -> Verdict:
    """Requests sent now land, naming both backends, in a log whose format records the backend and its time."""
    expected = ("new lines in an access log of the balancing site whose format records which backend answered "
                "and how long it took, naming every app host")
    root = _lb_config(lab)
    if isinstance(root, str):
        return expect(False, expected=expected, found=root)
    formats = upstream_formats(root)
    paths = sorted({path for path, fmt in nginx.access_logs(root) if fmt in formats})
    if not paths:
        partial = sorted(nginx.log_formats(root))
        return expect(False, expected=expected,
                      found=f"no access log uses a format with both the backend's address and its response time "
                            f"(formats defined: {', '.join(partial) or 'none'})")
    host = lab.host(_lb(lab))
    before = {p: _line_count(host, p) for p in paths}
    _spread(lab, _lb_url(lab))
    new = "\n".join(run(host, "tail", "-n", f"+{before[p] + 1}", p).stdout for p in paths)
    seen = {name: lab.address(name) in new for name in lab.hosts("app")}
    return expect(all(seen.values()), expected=expected,
                  found=f"{len(new.splitlines())} new lines in {', '.join(paths)} after {REQUESTS} requests; "
                        + ", ".join(f"{n} {'named' if s else 'never named'}" for n, s in seen.items()))


def _line_count(host, path: str) -> int:
    text = read(host, path)
    return len(text.splitlines()) if text else 0


def health(lab: Lab) -> Verdict:
    """The lb host answers 200 with a short body on its health endpoint, without passing it to a backend."""
    path = lab.vars.get("stage5_nginx_health_path", "/health")
    target = _lb_url(lab, "health", path)
    expected = f"200 with a short body from {target}, answered by nginx itself"
    reply = lab.http_get(target)
    problems = []
    if reply.status != 200:
        problems.append(f"{target} answers {reply.describe()}")
    elif not reply.body.strip():
        problems.append("the answer has an empty body")
    elif reply.backend or len(reply.body) > HEALTH_BODY_MAX:
        problems.append("the answer is a whole page" + (f" from backend {reply.backend}" if reply.backend else ""))
    root = _lb_config(lab)
    if not isinstance(root, str):
        passing = [s for s in nginx.servers(root) if nginx.listens_on(s, lab.ports["health"])
                   and nginx.directive_values(s, "proxy_pass")]
        if passing:
            problems.append("the site on the health port passes requests on to a backend")
    return expect(not problems, expected=expected, found="; ".join(problems) or "that")


def _tls_files(lab: Lab) -> tuple[str, str] | str:
    """(certificate, key) paths the https site uses, or why there are none."""
    root = _lb_config(lab)
    if isinstance(root, str):
        return root
    for server in nginx.servers(root):
        if nginx.listens_on(server, lab.ports["https"]):
            cert = nginx.effective(root, server, "ssl_certificate")
            key = nginx.effective(root, server, "ssl_certificate_key")
            if cert and key:
                return cert[0], key[0]
            return f"the site on port {lab.ports['https']} names no certificate and key"
    return f"no site listens on port {lab.ports['https']}"


def tls_problems(lab: Lab) -> list[str]:
    """What keeps the https site from serving a backend page with a self-signed cert and a root-only key."""
    reply = lab.http_get(_lb_url(lab, "https", scheme="https"))
    problems = [] if reply.ok and reply.backend else [
        f"https://{lab.address(_lb(lab))}/ answers {reply.describe()}"
        + ("" if reply.backend or not reply.status else " with a page naming no backend")]
    files = _tls_files(lab)
    if isinstance(files, str):
        return problems + [files]
    cert, key = files
    host = lab.host(_lb(lab))
    names = run(host, "openssl", "x509", "-noout", "-subject", "-issuer", "-in", cert).stdout
    fields = dict(line.split("=", 1) for line in names.splitlines() if "=" in line)
    subject, issuer = fields.get("subject", "").strip(), fields.get("issuer", "").strip()
    if not subject:
        problems.append(f"{cert} is not a readable certificate")
    elif subject != issuer:
        problems.append(f"the certificate is issued by {issuer}, not by itself (not self-signed)")
    served = run(host, "sh", "-c", f"openssl s_client -connect 127.0.0.1:{lab.ports['https']} </dev/null").stdout
    on_disk = read(host, cert) or ""
    if PEM.findall(served)[:1] != PEM.findall(on_disk)[:1]:
        problems.append(f"port {lab.ports['https']} serves a different certificate than {cert}")
    key_file = host.file(key)
    if not key_file.exists:
        problems.append(f"the key {key} is missing")
    elif key_file.user != "root":
        problems.append(f"the key {key} belongs to {key_file.user}; the goal asks that only root can read it")
    elif key_file.mode & 0o044:
        who = " and ".join(w for w, bits in (("its group", 0o040), ("everyone", 0o004)) if key_file.mode & bits)
        problems.append(f"the key {key} is readable by {who}; the goal asks that only root can read it")
    return problems


def tls(lab: Lab) -> Verdict:
    """HTTPS on the lb host answers with a backend page, with a self-signed certificate and a root-only key."""
    problems = tls_problems(lab)
    return expect(not problems, expected="https answering with a backend page, a self-signed certificate and a "
                                         "private key only root can read",
                  found="; ".join(problems) or "that")
