"""Learner progress: per learner and task, when it first passed and how the latest check went.

Stored as JSON: {learner: {stage: {task: {"first_passed": TIME, "last": "pass"|"fail", "checked": TIME}}}}.
A task that passed once and fails on the latest check is a regression; the next stage is the first one on
the path (registry order) that is not fully passed.
"""
from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lab_tasks.check_runner import StageResult
from lab_tasks.errors import LabError
from lab_tasks.registry import Registry, Stage


def state_file() -> Path:
    """$OPSLAB_STATE_DIR/progress.json, else $XDG_STATE_HOME (~/.local/state)/opslab/progress.json."""
    if os.environ.get("OPSLAB_STATE_DIR"):
        return Path(os.environ["OPSLAB_STATE_DIR"]) / "progress.json"
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "opslab" / "progress.json"


def learner() -> str:
    """$OPSLAB_LEARNER, else the login user."""
    return os.environ.get("OPSLAB_LEARNER") or getpass.getuser()


def load(path: Path | None = None) -> dict:
    """Everything stored, every task record in the current shape (older files stored only a timestamp)."""
    path = path or state_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LabError(f"progress file {path} is corrupt ({exc.msg}); move it aside") from exc
    for stages in data.values():
        for tasks in stages.values():
            for task, entry in tasks.items():
                if isinstance(entry, str):  # written before the latest result was kept
                    tasks[task] = {"first_passed": entry}
    return data


def record(results: list[StageResult], path: Path | None = None, now: datetime | None = None) -> dict:
    """Stamp each task's first pass and keep its latest result; returns this learner's progress."""
    path = path or state_file()
    data = load(path)
    mine = data.setdefault(learner(), {})
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    for result in results:
        stage = mine.setdefault(result.stage.id, {})
        for r in result.results:
            entry = stage.setdefault(r.task_id, {})
            if r.passed:
                entry.setdefault("first_passed", stamp)
            entry.update(last="pass" if r.passed else "fail", checked=stamp)
    _write(path, data)
    return mine


@dataclass(frozen=True)
class TaskState:
    """One task as `lab progress` shows it."""

    stage: str
    task: str
    first_passed: str | None
    last: str | None  # "pass", "fail", or None when never checked
    checked: str | None

    @property
    def passing(self) -> bool:
        """Passed on the latest check (older records without a latest result count their first pass)."""
        return self.last == "pass" or (self.last is None and self.first_passed is not None)

    @property
    def regressed(self) -> bool:
        """It passed once and fails now."""
        return self.first_passed is not None and self.last == "fail"

    def as_dict(self) -> dict:
        """JSON form for `lab progress --json`."""
        return {"task": self.task, "first_passed": self.first_passed, "last": self.last,
                "checked": self.checked, "regressed": self.regressed}


def task_states(registry: Registry, mine: dict) -> dict[str, list[TaskState]]:
    """{stage id: [TaskState per registry task]} for one learner's stored progress."""
    states = {}
    for stage in registry.stages:
        stored = mine.get(stage.id, {})
        states[stage.id] = [TaskState(stage.id, t.id, stored.get(t.id, {}).get("first_passed"),
                                      stored.get(t.id, {}).get("last"), stored.get(t.id, {}).get("checked"))
                            for t in stage.tasks]
    return states


def stage_done(states: list[TaskState]) -> bool:
    """Every task of the stage passes now."""
    return all(s.passing for s in states)


def next_stage(registry: Registry, states: dict[str, list[TaskState]]) -> Stage | None:
    """The first stage on the path that is not done yet (None when every stage is done)."""
    return next((s for s in registry.stages if not stage_done(states[s.id])), None)


def regressions(states: dict[str, list[TaskState]]) -> list[TaskState]:
    """Every task that passed once and fails on its latest check, in path order."""
    return [s for stage in states.values() for s in stage if s.regressed]


def _write(path: Path, data: dict) -> None:
    """Write atomically: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
