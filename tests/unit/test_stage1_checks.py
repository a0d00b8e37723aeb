"""Stage 1 checks against a planted copy of the exercise in a temp dir, through testinfra's local backend.

The near misses of every task are in hoststates_stage1.py (run by test_near_misses.py); these tests
cover the planted state, the learner's solution and that checks change nothing."""
import pytest

from hoststates_stage1 import learner_solution, planted
from lab_tasks.registry import load_registry
from lab_tasks.check_runner import run_stage

STAGE = load_registry().resolve("stage1")


@pytest.fixture
def lab(tmp_path):
    return planted(tmp_path)


def results(lab):
    return {r.task_id: r for r in run_stage(STAGE, lab).results}


def snapshot(root):
    return sorted((str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_planted_exercise_fails_every_task_with_its_hint(lab):
    found = results(lab)
    assert [t for t, r in found.items() if r.passed] == []
    assert all(r.hint == STAGE.task(t).hint and r.evidence.startswith("expected") for t, r in found.items())


def test_learner_solution_passes_every_task(lab, tmp_path):
    learner_solution(lab.vars, tmp_path)
    found = results(lab)
    assert {t: r.evidence for t, r in found.items() if not r.passed} == {}


def test_checks_change_nothing(lab, tmp_path):
    before = snapshot(tmp_path)
    results(lab)
    assert snapshot(tmp_path) == before
