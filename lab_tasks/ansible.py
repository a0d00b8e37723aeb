"""Run playbooks/stage.yml for `lab start|solve|reset`; a failure is one line naming the task and host."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, Stage

STAGE_PLAYBOOK = PROJECT_ROOT / "playbooks" / "stage.yml"
MODES = ("prepare", "solve", "reset")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s")
TASK = re.compile(r"^TASK \[(.+)\] \**$")
ERROR_PREFIX = re.compile(r"^\[ERROR\]:\s*(Task failed:\s*)?(Action failed:\s*)?")
UNREACHABLE_SIGNS = ("Failed to connect", "could not be sent to remote host")
FAILED = re.compile(r"^(?:fatal|failed): \[([^\]]+)\]")


@dataclass
class PlaybookRun:
    """What ansible-playbook did: changed count per host (from the recap), and the first failure seen."""

    changed: dict[str, int] = field(default_factory=dict)
    failure: tuple[str, str, str, str] | None = None  # (task, host, kind, message)
    _task: str = ""
    _error: str = ""
    _pending: bool = False

    def feed(self, line: str) -> None:
        """Follow one line of ansible-playbook's default output."""
        text = line.strip()
        if m := TASK.match(text):
            self._task, self._error = m.group(1), ""
        elif text.startswith("[ERROR]:"):
            self._error = ERROR_PREFIX.sub("", text)
        elif (m := FAILED.match(text)) and self.failure is None:
            kind = "unreachable" if "UNREACHABLE!" in text else "failed"
            self.failure = (self._task, m.group(1), kind, self._error)
            self._pending = not self._error
        elif self._pending and text.startswith("msg:"):
            self.failure = (*self.failure[:3], text.removeprefix("msg:").strip().strip("'\""))
            self._pending = False
        elif m := RECAP.match(text):
            self.changed[m.group(1)] = int(m.group(3))


def playbook_binary() -> str:
    """ansible-playbook next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise LabError("ansible-playbook not found; run `make install`")
    return found


def command(stage: Stage, mode: str, inventory: Path) -> list[str]:
    """The ansible-playbook command line for one stage and mode."""
    if mode not in MODES:
        raise LabError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    extra = {"opslab_stage": stage.id, "opslab_stage_mode": mode}
    return [playbook_binary(), str(STAGE_PLAYBOOK), "-i", str(inventory), "-e", json.dumps(extra)]


def run_stage_playbook(stage: Stage, mode: str, inventory: Path, echo=sys.stdout) -> PlaybookRun:
    """Run the stage's role in `mode`, streaming ansible's output to `echo`; LabError on failure."""
    if not Path(inventory).exists():
        raise LabError(f"inventory {inventory} not found; run `lab sandbox up` or pass -i INVENTORY")
    run = PlaybookRun()
    proc = subprocess.Popen(command(stage, mode, inventory), cwd=PROJECT_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_environment())
    for line in proc.stdout:
        echo.write(line)
        run.feed(line)
    if proc.wait() != 0:
        raise LabError(_failure_line(stage, mode, proc.returncode, run))
    return run


def _environment() -> dict:
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
