"""Recorded host states of stage 8 (Docker): the solved docker1 and the near misses a learner reaches.

`docker inspect` objects are trimmed to the fields the checks read, as recorded on the sandbox.
"""
from __future__ import annotations

import copy
import json
import shlex

import yaml
from hoststates import FakeHost, FakeInventory, NearMiss, Result, fake_lab

from lab_tasks.httpprobe import Reply

STAGE = "stage8"
ADDRESS = "10.213.7.51"
APP = "/srv/opslab/app"
COMPOSE = "/srv/opslab/compose/docker-compose.yml"
IMAGE_ID = "sha256:41300747ba4a6a8b496e7f74e13ce036d777786abb0b7129bf4d24102d5c057f"
VOLUME_DIR = "/var/lib/docker/volumes/opslab-data/_data"
HASHES = {"web": "8cb51343a68b", "poller": "5cdeb4d421bf"}

DOCKERFILE = """\
FROM opslab/debian:bookworm AS build
WORKDIR /build
COPY server.pl healthcheck.sh index.html.in ./
RUN perl -c server.pl \\
    && mkdir /out
FROM opslab/debian:bookworm
COPY --from=build /out/ /srv/web/
USER web
HEALTHCHECK CMD ["/srv/web/healthcheck.sh"]
CMD ["perl", "/srv/web/server.pl"]
"""

IMAGE = {"Id": IMAGE_ID, "Config": {"User": "web", "Healthcheck": {"Test": ["CMD", "/srv/web/healthcheck.sh"]}}}

CONTAINER = {
    "Image": IMAGE_ID,
    "State": {"Running": True, "Health": {"Status": "healthy"}},
    "HostConfig": {"RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                   "Memory": 134217728, "PidsLimit": 64, "NanoCpus": 500000000, "CpuQuota": 0, "CpuPeriod": 0,
                   "CpuShares": 0, "NetworkMode": "default",
                   "PortBindings": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}},
    "Mounts": [{"Type": "volume", "Name": "opslab-data", "Destination": "/data", "Source": VOLUME_DIR}],
}

COMPOSE_CONFIG = {
    "version": "2.4",
    "services": {
        "poller": {"command": ["bash", "-c", "while sleep 10; do { printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3; "
                                             "read -r line <&3; } 3<>/dev/tcp/web/8080; done"],
                   "image": "opslab/web:1.0", "depends_on": {"web": {"condition": "service_healthy"}}},
        "web": {"image": "opslab/web:1.0", "mem_limit": "128m", "volumes": ["web-data:/data:rw"]},
    },
    "volumes": {"web-data": {}},
}


def cmd(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _with(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value`."""
    changed = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return changed


def docker1(*, dockerfile: str | None = DOCKERFILE, image: dict | None = IMAGE, container: dict | None = CONTAINER,
            boots="ef95a633f86e 1796205879\nae9d0c49ca47 1796205888\n", compose: dict | None = COMPOSE_CONFIG,
            running=None, labels: dict | None = None) -> FakeHost:
    running = running or {"web": "running", "poller": "running"}
    labels = labels or HASHES
    ps = "".join(f"{name} {state} {labels.get(name, '')}\n" for name, state in running.items())
    files = {f"{VOLUME_DIR}/boots": boots}
    if dockerfile is not None:
        files[f"{APP}/Dockerfile"] = dockerfile
    fmt = '{{.Label "com.docker.compose.service"}} {{.State}} {{.Label "com.docker.compose.config-hash"}}'
    return FakeHost(files=files, commands={
        cmd("docker", "image", "inspect", "opslab/web:1.0"): json.dumps([image]) if image else Result(1, "[]"),
        cmd("docker", "container", "inspect", "opslab-web"): json.dumps([container]) if container else Result(1, "[]"),
        cmd("docker", "volume", "inspect", "opslab-data"): json.dumps([{"Mountpoint": VOLUME_DIR}]),
        cmd("docker-compose", "--file", COMPOSE, "config"): yaml.safe_dump(compose) if compose else Result(1, ""),
        cmd("docker-compose", "--project-name", "opslab", "--file", COMPOSE, "config", "--hash=*"):
            "".join(f"{n} {h}\n" for n, h in HASHES.items()) if compose else Result(1, ""),
        cmd("docker", "ps", "--all", "--filter", "label=com.docker.compose.project=opslab", "--format", fmt): ps,
    })


def lab(host: FakeHost | None = None, reply: Reply | None = None):
    built = fake_lab(STAGE, {"docker1": host or docker1()}, inventory=FakeInventory({"docker": {"docker1": ADDRESS}}))
    answer = reply or Reply(200, "<h1>opslab web 1.0</h1>")
    built.http_get = {f"http://{ADDRESS}:8080/": answer}.__getitem__
    return built


def solved(tmp_path):
    return lab()


def _miss(task, mistake, says, host=None, reply=None) -> NearMiss:
    return NearMiss(task, mistake, lambda tmp_path: lab(host, reply), says)


def _container(path: str, value) -> FakeHost:
    return docker1(container=_with(CONTAINER, path, value))


ONE_STAGE = "FROM opslab/debian:bookworm\nCOPY . /srv/web/\nUSER web\nHEALTHCHECK CMD /srv/web/healthcheck.sh\n"

NEAR_MISSES = [
    _miss("image", "a single-stage Dockerfile", "the Dockerfile has one stage", docker1(dockerfile=ONE_STAGE)),
    _miss("image", "two FROMs but the final stage copies nothing from the first", "takes nothing from the first",
          docker1(dockerfile=DOCKERFILE.replace("COPY --from=build /out/ /srv/web/", "COPY . /srv/web/"))),
    _miss("image", "USER added to the Dockerfile but the image not rebuilt", "the image runs as root",
          docker1(image=_with(IMAGE, "Config.User", ""))),
    _miss("image", "USER root", "the image runs as root", docker1(image=_with(IMAGE, "Config.User", "0:0"))),
    _miss("image", "HEALTHCHECK NONE", "switched off",
          docker1(image=_with(IMAGE, "Config.Healthcheck", {"Test": ["NONE"]}))),
    _miss("image", "not built yet", "the image has not been built", docker1(image=None)),
    _miss("running", "the container runs with the host's network, nothing published", "shares the host's network",
          _container("HostConfig", {**CONTAINER["HostConfig"], "PortBindings": {}, "NetworkMode": "host"})),
    _miss("running", "published on another host port", "is not published on the host's port 8080",
          _container("HostConfig.PortBindings", {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}]}),
          Reply(None, error="ConnectError: refused")),
    _miss("running", "the container runs an older build of the image", "another image",
          _container("Image", "sha256:0ld")),
    _miss("running", "the health check fails", "its health is unhealthy",
          _container("State.Health", {"Status": "unhealthy"})),
    _miss("running", "no container", "there is no such container", docker1(container=None),
          Reply(None, error="ConnectError: refused")),
    _miss("volume", "a bind mount of a host directory", "a bind mount",
          _container("Mounts", [{"Type": "bind", "Destination": "/data", "Source": "/srv/data"}])),
    _miss("volume", "an anonymous volume", "not opslab-data",
          _container("Mounts", [{"Type": "volume", "Name": "3f9a0c1d2e", "Destination": "/data"}])),
    _miss("volume", "the container was never recreated", "1 container has used opslab-data",
          docker1(boots="ef95a633f86e 1796205879\n")),
    _miss("volume", "nothing mounted at /data", "nothing is mounted at /data", _container("Mounts", [])),
    _miss("restart_policy", "always", ("the restart policy is always", "a container you stopped yourself"),
          _container("HostConfig.RestartPolicy", {"Name": "always"})),
    _miss("restart_policy", "on-failure", "the restart policy is on-failure",
          _container("HostConfig.RestartPolicy", {"Name": "on-failure", "MaximumRetryCount": 3})),
    _miss("restart_policy", "none set", "the restart policy is no", _container("HostConfig.RestartPolicy", {"Name": ""})),
    _miss("limits", "1 byte of memory would pass a positive-value check", "memory is 1 bytes",
          _container("HostConfig.Memory", 1)),
    _miss("limits", "128 MB (decimal) instead of 128 MiB", "memory is 128000000 bytes (122.1 MiB)",
          _container("HostConfig.Memory", 128000000)),
    _miss("limits", "one CPU instead of half", "CPU is limited to 1 CPU", _container("HostConfig.NanoCpus", 1000000000)),
    _miss("limits", "CPU shares instead of a limit", "shares only weigh containers",
          _container("HostConfig", {**CONTAINER["HostConfig"], "NanoCpus": 0, "CpuShares": 512})),
    _miss("limits", "no process limit", "processes are unlimited", _container("HostConfig.PidsLimit", -1)),
    _miss("compose", "web keeps its data in a bind mount", "web keeps its data in no named volume",
          docker1(compose=_with(COMPOSE_CONFIG, "services.web.volumes", ["/srv/web-data:/data:rw"]))),
    _miss("compose", "poller polls web by address", "poller does not poll web's /health by the service name",
          docker1(compose=_with(COMPOSE_CONFIG, "services.poller.command",
                                ["sh", "-c", "while sleep 10; do curl -fs http://172.18.0.2:8080/health; done"]))),
    _miss("compose", "the file was changed but the project not brought up again", "web runs an older version",
          docker1(labels={"web": "0ld", "poller": HASHES["poller"]})),
    _miss("compose", "poller exited", "poller is exited", docker1(running={"web": "running", "poller": "exited"})),
    _miss("compose", "an invalid file", "missing or invalid", docker1(compose=None)),
]
