"""Checks for stage 8: Docker image build, container settings, named volume and compose.

Probes are read-only: `docker image inspect`, `docker inspect`, `docker ps`, `docker-compose config`,
file reads on the docker host, and one HTTP GET from the control host to the published port.
Names, paths and the limits the goal states come from the role's defaults (`lab.vars`).
"""
import json
import re

import yaml

from lab_tasks import httpprobe
from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read, run

ROOT_USERS = {"", "root", "0"}
WANTED_POLICY = "unless-stopped"
POLICY_WORDS = {
    "always": "`always` also restarts a container you stopped yourself once the daemon restarts",
    "on-failure": "`on-failure` does not bring it back after a daemon or host restart",
    "no": "there is none, so nothing brings it back",
}
UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def inspect(host, *argv: str) -> dict:
    """The first object of `docker ... inspect` as a dict ({} when the object does not exist)."""
    result = run(host, "docker", *argv)
    return json.loads(result.stdout)[0] if result.rc == 0 and result.stdout.strip() else {}


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments skipped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines()
                                             if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        words = line.strip().split(None, 1)
        if words:
            found.append((words[0].upper(), words[1] if len(words) > 1 else ""))
    return found


def size_bytes(value: str | int) -> int:
    """`128m`, `128MiB`, `134217728` -> bytes (what `--memory` and compose's `mem_limit` accept)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?", str(value).strip().lower())
    if not match:
        raise ValueError(f"not a size: {value}")
    return int(float(match[1]) * UNITS[match[2]])


def _size(count: int) -> str:
    """Bytes in the unit a person reads: `128 MiB`, or `128000000 bytes (122.1 MiB)` when not whole MiB."""
    mib = count / 1024 ** 2
    return f"{mib:g} MiB" if count % 1024 ** 2 == 0 else f"{count} bytes ({mib:.1f} MiB)"


def limit_problems(host_config: dict, memory: str, pids: int, cpus: float) -> list[str]:
    """How a container's memory, process and CPU limits differ from the goal's (in words)."""
    problems = []
    wanted_memory = size_bytes(memory)
    found_memory = host_config.get("Memory") or 0
    if found_memory != wanted_memory:
        problems.append(f"memory is {_size(found_memory) if found_memory else 'unlimited'}; "
                        f"the goal asks for {wanted_memory / 1024 ** 2:g} MiB")
    found_pids = host_config.get("PidsLimit") or 0
    if found_pids != pids:
        problems.append(f"processes are {'unlimited' if found_pids <= 0 else f'limited to {found_pids}'}; "
                        f"the goal asks for {pids}")
    nano, quota, period = (host_config.get(k) or 0 for k in ("NanoCpus", "CpuQuota", "CpuPeriod"))
    found_cpus = nano / 1e9 if nano else (quota / (period or 100000) if quota > 0 else 0)
    if abs(found_cpus - cpus) > 1e-6:
        problems.append(f"CPU is {'unlimited' if not found_cpus else f'limited to {found_cpus:g} CPU'}"
                        + (" (shares only weigh containers against each other)" if host_config.get("CpuShares")
                           and not found_cpus else "") + f"; the goal asks for {cpus:g} CPU")
    return problems


def _container(lab: Lab) -> dict:
    return inspect(lab.host(), "container", "inspect", lab.vars["stage8_docker_container"])


def image_problems(dockerfile: str | None, config: dict, base: str) -> list[str]:
    """Why the Dockerfile and the built image are not a multi-stage, non-root image with a health check."""
    problems = []
    if dockerfile is None:
        problems.append("there is no Dockerfile")
    else:
        steps = instructions(dockerfile)
        froms = [args.split()[0] for name, args in steps if name == "FROM" and args]
        copies_from = any(name == "COPY" and "--from=" in args for name, args in steps)
        if len(froms) < 2 or not copies_from:
            problems.append("the Dockerfile has one stage" if len(froms) < 2 else
                            "the final stage takes nothing from the first (not a multi-stage build)")
        stage_names = {args.split()[-1].lower() for name, args in steps if name == "FROM" and " as " in args.lower()}
        if any(f != base and f.lower() not in stage_names for f in froms):
            problems.append(f"a stage starts from an image other than {base}")
    if not config:
        return problems + ["the image has not been built"]
    user = config.get("User", "")
    if user.split(":")[0] in ROOT_USERS:
        problems.append("the image runs as root")
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        problems.append("the image has no health check" + (" (it is switched off)" if test else ""))
    return problems


def image(lab: Lab) -> Verdict:
    """A multi-stage Dockerfile built into the image, which runs as non-root and has a HEALTHCHECK."""
    v = lab.vars
    dockerfile = read(lab.host(), f"{v['stage8_docker_app_dir']}/Dockerfile")
    config = inspect(lab.host(), "image", "inspect", v["stage8_docker_image"]).get("Config") or {}
    problems = image_problems(dockerfile, config, v["stage8_docker_base_image"])
    return expect(not problems, expected=f"a multi-stage Dockerfile FROM {v['stage8_docker_base_image']} built into "
                                         f"{v['stage8_docker_image']}, running as a non-root user with a health check",
                  found="; ".join(problems) or "that")


def running_problems(container: dict, image_id: str, port: int, container_port: int, reply) -> list[str]:
    """Why the container is not the app image, running, healthy and published on the goal's port."""
    if not container:
        return ["there is no such container"]
    state = container.get("State") or {}
    problems = []
    if image_id and container.get("Image") != image_id:
        problems.append("the container runs another image (or an older build of it)")
    if not state.get("Running"):
        problems.append("the container is not running")
    health = (state.get("Health") or {}).get("Status")
    if state.get("Running") and health != "healthy":
        problems.append(f"its health is {health or 'not checked'}")
    bindings = ((container.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{container_port}/tcp") or []
    if str(port) not in {b.get("HostPort") for b in bindings}:
        mode = (container.get("HostConfig") or {}).get("NetworkMode")
        problems.append("it shares the host's network instead of publishing a port" if mode == "host" else
                        f"the container's port {container_port} is not published on the host's port {port}")
    if not (reply.status == 200 and "opslab" in reply.body):
        problems.append(f"the control host gets {reply.describe()} from port {port}")
    return problems


def running(lab: Lab) -> Verdict:
    """The container of the app image is running and healthy, and its published port answers from the control host."""
    v, port = lab.vars, lab.ports["docker_app"]
    image_id = inspect(lab.host(), "image", "inspect", v["stage8_docker_image"]).get("Id", "")
    reply = lab.http_get(httpprobe.url(lab.address(lab.hosts()[0]), port))
    problems = running_problems(_container(lab), image_id, port, v["stage8_docker_container_port"], reply)
    return expect(not problems, expected=f"{v['stage8_docker_container']} from {v['stage8_docker_image']} running and "
                                         f"healthy, its port published on {port} and answering the control host",
                  found="; ".join(problems) or "that")


def _boots(lab: Lab) -> list[str]:
    """Lines of the boots file inside the named volume, read from the docker host's side."""
    volume = inspect(lab.host(), "volume", "inspect", lab.vars["stage8_docker_volume"])
    return (read(lab.host(), f"{volume.get('Mountpoint', '/nonexistent')}/boots") or "").splitlines()


def volume_problems(mounts: list[dict], boots: list[str], volume_name: str, target: str) -> list[str]:
    """Why the data path is not the named volume, or the volume has not outlived a container (in words)."""
    at_target = [m for m in mounts if m.get("Destination") == target]
    problems = []
    if not at_target:
        problems.append(f"nothing is mounted at {target}, so the data dies with the container")
    elif at_target[0].get("Type") != "volume":
        problems.append(f"{target} is a directory of the host (a bind mount), not a named volume")
    elif at_target[0].get("Name") != volume_name:
        problems.append(f"{target} is the volume {at_target[0].get('Name', '?')[:20]}, not {volume_name}")
    writers = {line.split()[0] for line in boots if line.strip()}
    if len(writers) < 2:
        problems.append(f"{len(writers)} container{'s have' if len(writers) != 1 else ' has'} used {volume_name}; "
                        "the goal asks to recreate the container and keep the data")
    return problems


def volume(lab: Lab) -> Verdict:
    """The named volume is mounted at the data path and has outlived at least one container."""
    v = lab.vars
    problems = volume_problems(_container(lab).get("Mounts") or [], _boots(lab), v["stage8_docker_volume"],
                               v["stage8_docker_data_mount"])
    return expect(not problems, expected=f"the named volume {v['stage8_docker_volume']} at "
                                         f"{v['stage8_docker_data_mount']}, written by more than one container",
                  found="; ".join(problems) or "that")


def restart_policy(lab: Lab) -> Verdict:
    """The container comes back after a daemon restart but stays stopped when stopped by hand: unless-stopped."""
    container = _container(lab)
    policy = ((container.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
    found = "no such container" if not container else "that" if policy == WANTED_POLICY else \
        f"the restart policy is {policy}: " + POLICY_WORDS.get(policy, "not one the goal describes")
    return expect(container and policy == WANTED_POLICY,
                  expected="a restart policy that brings the container back after a daemon or host restart but "
                           "leaves it stopped when you stopped it", found=found)


def limits(lab: Lab) -> Verdict:
    """The container has the goal's memory, process and CPU limits."""
    v = lab.vars
    host_config = _container(lab).get("HostConfig") or {}
    problems = limit_problems(host_config, v["stage8_docker_memory"], v["stage8_docker_pids_limit"],
                              float(v["stage8_docker_cpus"])) if host_config else ["there is no such container"]
    return expect(not problems, expected=f"{size_bytes(v['stage8_docker_memory']) // 1024 ** 2} MiB of memory, "
                                         f"{v['stage8_docker_pids_limit']} processes and {v['stage8_docker_cpus']} CPU",
                  found="; ".join(problems) or "that")


def _compose_containers(lab: Lab) -> dict[str, tuple[str, str]]:
    """{service: (state, config hash)} of the compose project's containers."""
    project = lab.vars["stage8_docker_compose_project"]
    fmt = '{{.Label "com.docker.compose.service"}} {{.State}} {{.Label "com.docker.compose.config-hash"}}'
    result = run(lab.host(), "docker", "ps", "--all", "--filter", f"label=com.docker.compose.project={project}",
                 "--format", fmt)
    return {words[0]: (words[1], words[2] if len(words) > 2 else "")
            for words in (line.split() for line in result.stdout.splitlines()) if len(words) >= 2}


def compose_problems(config: dict | None, running_now: dict[str, tuple[str, str]], hashes: dict[str, str],
                     wanted: list[str], image_name: str) -> list[str]:
    """Why the compose file and project do not run web (with a named volume) and a poller of web by name."""
    if config is None:
        return ["the compose file is missing or invalid"]
    services = config.get("services") or {}
    problems = [f"the file has no service {name}" for name in wanted if name not in services]
    web, poller = services.get("web") or {}, services.get("poller") or {}
    named = set(config.get("volumes") or {})
    if "web" in services and not any(isinstance(m, dict) and m.get("type") == "volume" and m.get("source") in named
                                     or isinstance(m, str) and m.split(":")[0] in named
                                     for m in web.get("volumes") or []):
        problems.append("web keeps its data in no named volume")
    for name, service in (("web", web), ("poller", poller)):
        if name in services and service.get("image") != image_name:
            problems.append(f"{name} does not run {image_name}")
    command = json.dumps([poller.get("command"), poller.get("entrypoint")])
    if "poller" in services and not (re.search(r"\bweb\b", command) and "/health" in command):
        problems.append("poller does not poll web's /health by the service name")
    for name in wanted:
        state, label = running_now.get(name, ("", ""))
        if state != "running":
            problems.append(f"{name} is {state or 'not created'} in the project")
        elif hashes.get(name) and label != hashes[name]:
            problems.append(f"{name} runs an older version of the file (not brought up again since the change)")
    return problems


def compose(lab: Lab) -> Verdict:
    """A valid compose file whose project runs the current version of every wanted service."""
    v = lab.vars
    path = f"{v['stage8_docker_compose_dir']}/docker-compose.yml"
    rendered = run(lab.host(), "docker-compose", "--file", path, "config")
    config = yaml.safe_load(rendered.stdout) if rendered.rc == 0 else None
    # The hash covers names the project prefixes, so it is only comparable under the project's name.
    hashes = dict(line.split(" ", 1) for line in run(lab.host(), "docker-compose", "--project-name",
                                                     v["stage8_docker_compose_project"], "--file", path, "config",
                                                     "--hash=*").stdout.splitlines() if " " in line)
    problems = compose_problems(config, _compose_containers(lab), hashes, v["stage8_docker_compose_services"],
                                v["stage8_docker_image"])
    return expect(not problems, expected=f"{path} valid, web with a named volume and poller polling web by name, run "
                                         f"as the project {v['stage8_docker_compose_project']}",
                  found="; ".join(problems) or "that")
