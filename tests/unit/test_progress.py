"""Progress persistence: first-pass timestamps per learner, in $OPSLAB_STATE_DIR."""
from datetime import datetime, timezone

import pytest

from lab_tasks import progress
from lab_tasks.checks import CheckResult
from lab_tasks.errors import LabError
from lab_tasks.registry import load_registry
from lab_tasks.runner import StageResult

STAGE = load_registry().resolve("stage1")
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


def test_first_pass_timestamp_is_kept(state_dir):
    progress.record([result(fhs=True, glob=False)], now=T1)
    mine = progress.record([result(fhs=True, glob=True)], now=T2)
    assert mine["stage1"] == {"fhs": "2024-01-01T00:00:00+00:00", "glob": "2024-02-01T00:00:00+00:00"}
    assert progress.load()["ada"] == mine


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
