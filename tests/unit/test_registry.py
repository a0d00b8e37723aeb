"""The stage registry: loading, validation, name resolution, and that every stage is complete."""
import importlib

import pytest
import yaml

from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, load_registry
from lab_tasks.check_runner import check_function

REGISTRY = load_registry()
STAGES = REGISTRY.stages
ENTRY_POINTS = ("main", "prepare", "solve", "reset")


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_stage_has_at_least_five_tasks(stage):
    assert len(stage.tasks) >= 5


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_every_check_function_exists(stage):
    for task in stage.tasks:
        assert callable(check_function(task.check)), task.check


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_role_has_every_entry_point_and_page_exists(stage):
    tasks_dir = PROJECT_ROOT / "roles" / stage.role / "tasks"
    for entry in ENTRY_POINTS:
        assert (tasks_dir / f"{entry}.yml").is_file(), f"{stage.role} lacks tasks/{entry}.yml"
    assert (PROJECT_ROOT / stage.page).is_file(), stage.page


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_every_task_has_three_hint_levels(stage):
    for task in stage.tasks:
        assert len(task.hints) == 3 and task.hint == task.hints[0], task.id


def test_the_path_has_prerequisites_and_times():
    assert STAGES[0].requires == ()
    assert all(stage.minutes > 0 for stage in STAGES)
    assert all(stage.requires for stage in STAGES[1:]), "every later stage builds on something"


def test_hint_levels_beyond_three_are_a_lab_error():
    task = STAGES[0].tasks[0]
    assert task.hint_at(3) == task.hints[2]
    with pytest.raises(LabError, match="hint level 4 does not exist; use 1 to 3"):
        task.hint_at(4)


@pytest.mark.parametrize("name", ["stage1", "1", "shell", "SHELL", "Stage1"])
def test_resolve_accepts_id_number_and_slug(name):
    assert REGISTRY.resolve(name).id == "stage1"


def test_resolve_unknown_stage_names_it():
    with pytest.raises(LabError, match="unknown stage 'nope'"):
        REGISTRY.resolve("nope")


def test_unknown_task_names_the_known_ones():
    stage = REGISTRY.resolve("stage1")
    with pytest.raises(LabError, match="unknown task 'nope' in stage1; known tasks: fhs"):
        stage.task("nope")


@pytest.mark.parametrize("text, problem", [
    ("stages: [{id: stage1}]", "missing slug"),
    ("stages: [::", "is invalid"),
    ("other: 1", "is invalid"),
])
def test_invalid_registry_is_a_lab_error(tmp_path, text, problem):
    path = tmp_path / "stages.yml"
    path.write_text(text)
    with pytest.raises(LabError, match=problem):
        load_registry(path)


def test_duplicate_task_ids_are_rejected(tmp_path):
    data = yaml.safe_load((PROJECT_ROOT / "lab_tasks" / "stages.yml").read_text())
    first = data["stages"][0]
    first["tasks"].append(dict(first["tasks"][0]))
    path = tmp_path / "stages.yml"
    path.write_text(yaml.safe_dump({"stages": [first]}))
    with pytest.raises(LabError, match="not unique"):
        load_registry(path)


def test_check_modules_import_without_a_host():
    for stage in STAGES:
        importlib.import_module(f"lab_tasks.checks.{stage.role}")


def _one_stage(tmp_path, change):
    data = yaml.safe_load((PROJECT_ROOT / "lab_tasks" / "stages.yml").read_text())
    stages = data["stages"][:2]
    change(stages)
    path = tmp_path / "stages.yml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    return path


@pytest.mark.parametrize("change, problem", [
    (lambda s: s[0]["tasks"][0].update(hints=["only one"]), "hints must be a list of 3"),
    (lambda s: s[0]["tasks"][0].update(hints=["a", "", "c"]), "hints must be a list of 3"),
    (lambda s: s[0]["tasks"][0].pop("hints"), "missing hints"),
    (lambda s: (s[0]["tasks"][0].pop("hints"), s[0]["tasks"][0].update(hint="one old-style hint")),
     "missing hints"),
    (lambda s: s[0].pop("minutes"), "missing minutes"),
    (lambda s: s[0].update(minutes="an hour"), "minutes must be a positive whole number"),
    (lambda s: s[0].pop("requires"), "requires must be a list"),
    (lambda s: s[0].update(requires=["stage2"]), "requires stage2, which is not an earlier stage"),
    (lambda s: s[1].update(requires=["stage9"]), "requires stage9, which is not an earlier stage"),
])
def test_path_and_hint_fields_are_validated(tmp_path, change, problem):
    path = _one_stage(tmp_path, change)
    with pytest.raises(LabError, match=problem):
        load_registry(path)
