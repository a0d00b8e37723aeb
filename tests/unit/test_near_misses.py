"""Checks cannot be fooled: every task's plausible wrong and half-done states fail, with evidence in words.

Each stage records its host states in tests/unit/hoststates_<stage>.py (see hoststates.py): the solved
state must pass every task; each near miss must fail ITS task, not by crashing, with evidence that
contains the words naming the mistake. Every task needs at least one near miss.
"""
import pytest

from hoststates import state_module
from lab_tasks.check_runner import run_task
from lab_tasks.registry import load_registry

STAGES = load_registry().stages
# Stages whose recorded states are still being written, with who writes them. Remove a stage when its
# module lands: the xfail is strict, so a pending stage that passes fails the run.
PENDING = {
}


def _pending(stage_id: str):
    reason = PENDING.get(stage_id)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def _near_miss_params():
    params = []
    for stage in STAGES:
        module = state_module(stage.id)
        for miss in getattr(module, "NEAR_MISSES", []):
            params.append(pytest.param(stage, miss, id=f"{stage.id}-{miss.task}-{miss.mistake}"))
    return params


@pytest.mark.parametrize("stage", [pytest.param(s, marks=_pending(s.id), id=s.id) for s in STAGES])
def test_every_task_has_a_near_miss(stage):
    module = state_module(stage.id)
    assert module is not None, f"tests/unit/hoststates_{stage.id}.py is missing"
    covered = {miss.task for miss in module.NEAR_MISSES}
    assert [t.id for t in stage.tasks if t.id not in covered] == []
    assert {miss.task for miss in module.NEAR_MISSES} <= {t.id for t in stage.tasks}


@pytest.mark.parametrize("stage", [pytest.param(s, marks=_pending(s.id), id=s.id) for s in STAGES])
def test_solved_state_passes_every_task(stage, tmp_path):
    module = state_module(stage.id)
    assert module is not None, f"tests/unit/hoststates_{stage.id}.py is missing"
    lab = module.solved(tmp_path)
    failed = {}
    for task in stage.tasks:
        result = run_task(task, lab)
        if not result.passed:
            failed[task.id] = result.evidence
    assert failed == {}


@pytest.mark.parametrize("stage, miss", _near_miss_params())
def test_near_miss_fails_its_task_saying_why(stage, miss, tmp_path):
    result = run_task(stage.task(miss.task), miss.lab(tmp_path))
    assert not result.passed, f"{miss.mistake}: passed with evidence {result.evidence!r}"
    assert not result.evidence.startswith("check raised"), result.evidence
    missing = [w for w in miss.words if w not in result.evidence]
    assert missing == [], f"evidence {result.evidence!r} does not say {missing}"
