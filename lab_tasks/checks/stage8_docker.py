"""Checks for stage 8: Docker image build, container settings, named volume and compose.

Probes are read-only: `docker image inspect`, `docker inspect`, `docker ps`, `docker-compose config`,
file reads on the docker host, and one HTTP GET from the control host to the published port.
Names and paths come from the role's defaults (`lab.vars`).
"""
import json
import shlex
import urllib.error
import urllib.request

from lab_tasks.checks import Lab, Verdict, expect

ROOT_USERS = {"", "root", "0", "0:0", "root:root"}
RESTART_POLICIES = {"always", "unless-stopped"}


def inspect(host, *argv: str) -> dict:
    """The first object of `docker ... inspect` as a dict ({} when the object does not exist)."""
    result = host.run(" ".join(shlex.quote(a) for a in ("docker", *argv)))
    return json.loads(result.stdout)[0] if result.rc == 0 else {}


def from_lines(dockerfile: str) -> list[str]:
    """The FROM instructions of a Dockerfile (case-insensitive, comments skipped)."""
    return [line.strip() for line in dockerfile.splitlines() if line.strip().upper().startswith("FROM ")]


def limit_problems(host_config: dict) -> list[str]:
    """Which of memory, pids and CPU limits a container's HostConfig lacks."""
    limits = {"memory": host_config.get("Memory"), "pids": host_config.get("PidsLimit"),
              "cpus": host_config.get("NanoCpus") or host_config.get("CpuQuota")}
    return [f"no {name} limit" for name, value in limits.items() if not value or value < 0]


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (status 0 and the error when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError as error:
        return 0, str(error)


def _container(lab: Lab) -> dict:
    return inspect(lab.host(), "container", "inspect", lab.vars["stage8_docker_container"])


def image(lab: Lab) -> Verdict:
    """A multi-stage Dockerfile built into the image, which runs as non-root and has a HEALTHCHECK."""
    v = lab.vars
    dockerfile = lab.host().file(f"{v['stage8_docker_app_dir']}/Dockerfile")
    stages = from_lines(dockerfile.content_string) if dockerfile.exists else []
    config = inspect(lab.host(), "image", "inspect", v["stage8_docker_image"]).get("Config") or {}
    user, health = config.get("User", ""), (config.get("Healthcheck") or {}).get("Test")
    return expect(len(stages) >= 2 and user not in ROOT_USERS and health,
                  expected=f"a Dockerfile with >= 2 FROM and image {v['stage8_docker_image']} with a non-root USER "
                           "and a HEALTHCHECK",
                  found=f"{len(stages)} FROM, image {'present' if config else 'missing'}, "
                        f"USER {user or 'root'}, HEALTHCHECK {health or 'none'}")


def running(lab: Lab) -> Verdict:
    """The container is running and healthy, and its published port answers from the control host."""
    v, port = lab.vars, lab.ports["docker_app"]
    state = _container(lab).get("State") or {}
    health = (state.get("Health") or {}).get("Status", "no healthcheck")
    status, body = http_get(f"http://{lab.address(lab.hosts()[0])}:{port}/")
    return expect(state.get("Running") and health == "healthy" and status == 200 and "opslab" in body,
                  expected=f"{v['stage8_docker_container']} running and healthy, GET :{port}/ answering 200",
                  found=f"running={state.get('Running', False)}, health={health}, GET -> {status} {body[:60]!r}")


def _boots(lab: Lab) -> list[str]:
    """Lines of the boots file inside the named volume, read from the docker host's side."""
    volume = inspect(lab.host(), "volume", "inspect", lab.vars["stage8_docker_volume"])
    f = lab.host().file(f"{volume.get('Mountpoint', '/nonexistent')}/boots")
    return f.content_string.splitlines() if f.exists else []


def volume(lab: Lab) -> Verdict:
    """The named volume is mounted at the data path and has outlived at least one container."""
    v = lab.vars
    mounts = _container(lab).get("Mounts") or []
    mounted = any(m.get("Type") == "volume" and m.get("Name") == v["stage8_docker_volume"]
                  and m.get("Destination") == v["stage8_docker_data_mount"] for m in mounts)
    containers = {line.split()[0] for line in _boots(lab) if line.strip()}
    return expect(mounted and len(containers) >= 2,
                  expected=f"volume {v['stage8_docker_volume']} at {v['stage8_docker_data_mount']}, "
                           "written by >= 2 containers",
                  found=f"mounted={mounted}, containers that wrote boots: {len(containers)}")


def restart_policy(lab: Lab) -> Verdict:
    """The container comes back after a daemon restart: restart policy always or unless-stopped."""
    policy = ((_container(lab).get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "none"
    return expect(policy in RESTART_POLICIES, expected=" or ".join(sorted(RESTART_POLICIES)), found=policy)


def limits(lab: Lab) -> Verdict:
    """The container has memory, pids and CPU limits."""
    host_config = _container(lab).get("HostConfig") or {}
    problems = limit_problems(host_config)
    return expect(host_config and not problems, expected="memory, pids and cpus limits",
                  found="; ".join(problems) or f"memory={host_config.get('Memory')} pids={host_config.get('PidsLimit')} "
                                               f"nanocpus={host_config.get('NanoCpus')}")


def _compose_services(lab: Lab) -> dict[str, str]:
    """{service: state} of the compose project's containers."""
    project = lab.vars["stage8_docker_compose_project"]
    result = lab.host().run(
        f"docker ps --all --filter label=com.docker.compose.project={shlex.quote(project)} "
        "--format '{{.Label \"com.docker.compose.service\"}} {{.State}}'")
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def compose(lab: Lab) -> Verdict:
    """A valid compose file whose project runs every wanted service."""
    v = lab.vars
    path = f"{v['stage8_docker_compose_dir']}/docker-compose.yml"
    valid = lab.host().run(f"docker-compose --file {shlex.quote(path)} config --quiet").rc == 0
    services = _compose_services(lab)
    wanted = v["stage8_docker_compose_services"]
    return expect(valid and all(services.get(name) == "running" for name in wanted),
                  expected=f"{path} valid and project {v['stage8_docker_compose_project']} running {', '.join(wanted)}",
                  found=f"valid={valid}, services {services or 'none'}")
