"""The stage registry: loading, validation, name resolution, and that every stage is complete."""
import importlib
import re

import pytest
import yaml

from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, load_registry
from lab_tasks.runner import check_function

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


def _solution_commands(role: str) -> list[str]:
    """Every shell/command line in the role's solve.yml."""
    tasks = yaml.safe_load((PROJECT_ROOT / "roles" / role / "tasks" / "solve.yml").read_text()) or []
    found = []
    for task in _walk(tasks):
        for module in ("ansible.builtin.command", "ansible.builtin.shell"):
            args = task.get(module)
            cmd = args.get("cmd") if isinstance(args, dict) else args
            if cmd:
                found.append(" ".join(str(cmd).split()))
    return found


def _walk(tasks):
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _walk(task.get(key, []))


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_goals_and_hints_do_not_contain_the_solution(stage):
    commands = _solution_commands(stage.role)
    for task in stage.tasks:
        text = " ".join(f"{task.goal} {task.hint}".split())
        for cmd in commands:
            literal = re.split(r"\{\{.*?\}\}", cmd)  # compare the literal parts of templated commands
            longest = max(literal, key=len).strip()
            assert len(longest) < 8 or longest not in text, f"{stage.id}/{task.id} reveals `{cmd}`"


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
