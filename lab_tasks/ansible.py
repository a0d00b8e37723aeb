"""Run playbooks through ansible-runner: playbooks/stage.yml for `lab start|solve|reset`, or any other.

Ansible's own output streams to the user as it happens; what the run did comes from ansible-runner's
structured events (the first failure: task, host, reason) and its per-host stats, never from the text.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, Stage

STAGE_PLAYBOOK = PROJECT_ROOT / "playbooks" / "stage.yml"
MODES = ("prepare", "solve", "reset")
FAILED_EVENTS = {"runner_on_failed": "failed", "runner_item_on_failed": "failed",
                 "runner_on_unreachable": "unreachable"}
# A failed (not unreachable) task whose reason is a lost connection still means: bring the sandbox up.
UNREACHABLE_SIGNS = ("Failed to connect", "could not be sent to remote host")
# ansible-core wraps some reasons in this; the reason itself is what the learner needs.
WRAPPER_PREFIX = "Task failed: "


class Failure(NamedTuple):
    """The first task that failed and was not ignored."""

    task: str
    host: str
    kind: str  # failed | unreachable
    message: str


@dataclass(frozen=True)
class HostStats:
    """One host's line of the play recap, from ansible-runner's stats."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


# ansible-runner's stats keys for each HostStats field.
STATS_KEYS = {"ok": "ok", "changed": "changed", "failed": "failures", "unreachable": "dark",
              "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}


@dataclass
class PlaybookRun:
    """What a playbook run did: per-host stats, the first failure, the exit code."""

    hosts: dict[str, HostStats] = field(default_factory=dict)
    failure: Failure | None = None
    rc: int = 0  # ansible-playbook's exit code

    @property
    def changed(self) -> dict[str, int]:
        """Changed task count per host."""
        return {host: stats.changed for host, stats in self.hosts.items()}

    def feed(self, event: dict) -> None:
        """Follow one ansible-runner event: remember the first failure that was not ignored."""
        kind = FAILED_EVENTS.get(event.get("event", ""))
        data = event.get("event_data", {})
        if kind is None or self.failure is not None or data.get("ignore_errors"):
            return
        task = f"{data['role']} : {data.get('task', '')}" if data.get("role") else data.get("task", "")
        self.failure = Failure(task, data.get("host", "?"), kind, _reason(data.get("res") or {}))

    def count(self, stats: dict | None) -> None:
        """Take the per-host counts from ansible-runner's stats (None when no play ran)."""
        stats = stats or {}
        names = sorted({host for key in ("processed", *STATS_KEYS.values()) for host in stats.get(key) or {}})
        self.hosts = {host: HostStats(**{name: (stats.get(key) or {}).get(host, 0) for name, key in STATS_KEYS.items()})
                      for host in names}


def _reason(result: dict) -> str:
    """The module's own message, with the last line of stderr when the message alone says little."""
    message = str(result.get("msg") or "").removeprefix(WRAPPER_PREFIX).strip()
    stderr = str(result.get("stderr") or "").strip()
    if stderr:
        message = f"{message}: {stderr.splitlines()[-1]}" if message else stderr.splitlines()[-1]
    return " ".join(message.split()) or f"rc={result.get('rc', '?')}"


def run_stage_playbook(stage: Stage, mode: str, inventory: Path, echo=sys.stdout) -> PlaybookRun:
    """Run the stage's role in `mode`, streaming ansible's output to `echo`; LabError on failure."""
    if mode not in MODES:
        raise LabError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    run = run_playbook(STAGE_PLAYBOOK, inventory, {"opslab_stage": stage.id, "opslab_stage_mode": mode}, echo)
    if run.rc != 0:
        raise LabError(_failure_line(stage, mode, run.rc, run))
    return run


def run_playbook(playbook: Path, inventory: Path, extravars: dict | None = None, echo=sys.stdout) -> PlaybookRun:
    """Run a playbook through ansible-runner, streaming ansible's output to `echo`; the run's exit code is
    `rc` of the result. LabError when it cannot start; KeyboardInterrupt after Ctrl-C stopped it."""
    import ansible_runner  # imported here: `lab list/show/check` never pay for it

    if not Path(inventory).exists():
        raise LabError(f"inventory {inventory} not found; run `lab sandbox up` or pass -i INVENTORY")
    env = _environment()
    if not shutil.which("ansible-playbook", path=env["PATH"]):
        raise LabError("ansible-playbook not found; run `make install`")
    run = PlaybookRun()
    interrupt = _Interrupt()

    def follow(event: dict) -> bool:
        if event.get("event") == "playbook_on_start":
            interrupt.started(event.get("pid"))
        if text := event.get("stdout"):
            echo.write(text.replace("\r\n", "\n") + "\n")
            echo.flush()
        run.feed(event)
        return True  # keep the event: runner.stats is read from the saved events

    # Artifacts (events, stdout, fact cache) live in a private temp dir, removed after the run.
    with tempfile.TemporaryDirectory(prefix="opslab-ansible-") as private_dir, interrupt:
        runner = ansible_runner.run(
            private_data_dir=private_dir, project_dir=str(PROJECT_ROOT), playbook=str(playbook),
            inventory=str(Path(inventory).resolve()), extravars=extravars or {}, envvars=env,
            quiet=True, suppress_output_file=True, event_handler=follow, cancel_callback=interrupt.before_start)
        run.count(runner.stats)
        run.rc = runner.rc
    if interrupt.requested:
        raise KeyboardInterrupt
    return run


class _Interrupt:
    """Ctrl-C while a playbook runs. ansible-playbook runs on ansible-runner's pty, out of reach of the
    terminal's SIGINT, so it is passed on: ansible then stops its workers (each in a session of its own)
    and exits as it would in a terminal. Before the playbook has started, ansible-runner cancels it."""

    def __init__(self) -> None:
        self.playbook_pid: int | None = None
        self.requested = False
        self._previous = None

    def before_start(self) -> bool:
        """ansible-runner's cancel check: cancel only a playbook that has not started yet."""
        return self.requested and self.playbook_pid is None

    def started(self, pid: int | None) -> None:
        self.playbook_pid = pid
        if self.requested:
            self._pass_on()

    def _pass_on(self) -> None:
        if self.playbook_pid is not None:
            with suppress(ProcessLookupError):
                os.kill(self.playbook_pid, signal.SIGINT)

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        self._pass_on()

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _environment() -> dict:
    """The project's ansible.cfg, no colours, and this Python's bin/ (the venv's ansible-playbook) first."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _failure_line(stage: Stage, mode: str, rc: int, run: PlaybookRun) -> str:
    what = f"ansible-playbook {mode} of {stage.id} failed"
    if run.failure:
        task, host, kind, message = run.failure
        kind = "unreachable" if any(sign in message for sign in UNREACHABLE_SIGNS) else kind
        fix = "run `lab sandbox up`" if kind == "unreachable" else "fix it, then rerun (details above)"
        return f"{what} at task '{task}' on {host} ({kind}): {message[:200]}; {fix}"
    return f"{what} (exit {rc}); read the output above and rerun"
