"""Run a stage's checks: reachability first (fatal), then every task, each isolated from the others."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from lab_tasks.checks import CheckResult, Lab, Verdict
from lab_tasks.registry import Stage, Task


@dataclass(frozen=True)
class StageResult:
    """Every task result of one stage run."""

    stage: Stage
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        """True when every task passed."""
        return all(r.passed for r in self.results)


def check_function(spec: str) -> Callable[[Lab], Verdict]:
    """`stage1_shell.fhs` -> the function fhs in lab_tasks/checks/stage1_shell.py."""
    module_name, _, function_name = spec.rpartition(".")
    module = importlib.import_module(f"lab_tasks.checks.{module_name}")
    return getattr(module, function_name)


def run_task(task: Task, lab: Lab) -> CheckResult:
    """One task's result; an exception inside the check is a failed task with the error as evidence."""
    try:
        verdict = check_function(task.check)(lab)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"check {task.check} returned {type(verdict).__name__}, not a Verdict")
    except Exception as exc:  # a broken check or an odd host state must not hide the other tasks
        message = " ".join(str(exc).split())[:300]
        verdict = Verdict(False, f"check raised {type(exc).__name__}: {message}")
    return CheckResult(task.id, verdict.passed, verdict.evidence, task.hint)


def run_stage(stage: Stage, lab: Lab) -> StageResult:
    """Reachability first (raises LabError), then every task of the stage in registry order."""
    lab.ensure_reachable()
    return StageResult(stage, tuple(run_task(task, lab) for task in stage.tasks))
