"""Progress: first pass and latest result per learner and task, regressions and the next stage."""
import json

from datetime import datetime, timezone

import pytest

from lab_tasks import progress
from lab_tasks.checks import CheckResult
from lab_tasks.errors import LabError
from lab_tasks.registry import load_registry
from lab_tasks.check_runner import StageResult

REGISTRY = load_registry()
STAGE = REGISTRY.resolve("stage1")
T1 = datetime(2024, 1, 1, tzinfo=timezone.utc)
T2 = datetime(2024, 2, 1, tzinfo=timezone.utc)


def result(**passed):
    return StageResult(STAGE, tuple(CheckResult(t, ok, "e", "h") for t, ok in passed.items()))


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("OPSLAB_LEARNER", "ada")
    return tmp_path


def test_state_file_honours_env(state_dir):
    assert progress.state_file() == state_dir / "progress.json"


def test_first_pass_timestamp_is_kept_and_latest_result_updated(state_dir):
    progress.record([result(fhs=True, glob=False)], now=T1)
    mine = progress.record([result(fhs=True, glob=True)], now=T2)
    assert mine["stage1"]["fhs"] == {"first_passed": "2024-01-01T00:00:00+00:00", "last": "pass",
                                     "checked": "2024-02-01T00:00:00+00:00"}
    assert mine["stage1"]["glob"]["first_passed"] == "2024-02-01T00:00:00+00:00"
    assert progress.load()["ada"] == mine


def test_a_task_that_passed_and_fails_now_is_a_regression():
    progress.record([result(fhs=True, glob=True)], now=T1)
    progress.record([result(fhs=False, glob=True)], now=T2)
    states = progress.task_states(REGISTRY, progress.load()["ada"])
    assert [(r.stage, r.task) for r in progress.regressions(states)] == [("stage1", "fhs")]
    never = progress.task_states(REGISTRY, {"stage1": {"glob": {"last": "fail"}}})
    assert progress.regressions(never) == [], "failing without ever passing is no regression"


def test_next_stage_is_the_first_one_not_done():
    assert progress.next_stage(REGISTRY, progress.task_states(REGISTRY, {})).id == "stage1"
    progress.record([result(**{t.id: True for t in STAGE.tasks})], now=T1)
    states = progress.task_states(REGISTRY, progress.load()["ada"])
    assert progress.stage_done(states["stage1"]) and progress.next_stage(REGISTRY, states).id == "stage2"
    progress.record([result(glob=False)], now=T2)
    states = progress.task_states(REGISTRY, progress.load()["ada"])
    assert progress.next_stage(REGISTRY, states).id == "stage1", "a regression reopens the stage"


def test_files_from_before_latest_results_still_load(state_dir):
    (state_dir / "progress.json").write_text(json.dumps({"ada": {"stage1": {"fhs": "2024-01-01"}}}))
    states = progress.task_states(REGISTRY, progress.load()["ada"])
    assert states["stage1"][0].passing and not states["stage1"][0].regressed


def test_learners_are_kept_apart(monkeypatch):
    progress.record([result(fhs=True)], now=T1)
    monkeypatch.setenv("OPSLAB_LEARNER", "bob")
    progress.record([result(glob=True)], now=T1)
    data = progress.load()
    assert set(data["ada"]["stage1"]) == {"fhs"} and set(data["bob"]["stage1"]) == {"glob"}


def test_corrupt_file_is_a_lab_error(state_dir):
    (state_dir / "progress.json").write_text("{not json")
    with pytest.raises(LabError, match="corrupt"):
        progress.load()
