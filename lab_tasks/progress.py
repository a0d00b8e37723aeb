"""Learner progress: when each task first passed, per learner, in one JSON file."""
from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from lab_tasks.errors import LabError
from lab_tasks.runner import StageResult


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
    """Everything stored: {learner: {stage: {task: first-pass timestamp}}}."""
    path = path or state_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LabError(f"progress file {path} is corrupt ({exc.msg}); move it aside") from exc


def record(results: list[StageResult], path: Path | None = None, now: datetime | None = None) -> dict:
    """Stamp every newly passed task with the time of its first pass; returns this learner's progress."""
    path = path or state_file()
    data = load(path)
    mine = data.setdefault(learner(), {})
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    for result in results:
        stage = mine.setdefault(result.stage.id, {})
        for r in result.results:
            if r.passed:
                stage.setdefault(r.task_id, stamp)
    _write(path, data)
    return mine


def _write(path: Path, data: dict) -> None:
    """Write atomically: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
