"""The stage registry (lab_tasks/stages.yml): load, validate, resolve `3` / `stage3` / `shell`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from lab_tasks.errors import LabError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
REGISTRY_PATH = PACKAGE_DIR / "stages.yml"
STAGE_FIELDS = ("id", "slug", "title", "hosts", "role", "page", "minutes", "tasks")
TASK_FIELDS = ("id", "goal", "check", "hints")
HINT_LEVELS = 3  # 1: the concept and where to read, 2: the command to learn, 3: a near answer


@dataclass(frozen=True)
class Task:
    """One checkable task of a stage; `hints` go from the concept (level 1) to a near answer (level 3)."""

    id: str
    goal: str
    check: str
    hints: tuple[str, ...]

    @property
    def hint(self) -> str:
        """The first hint level: what `lab check` shows under a failure."""
        return self.hints[0]

    def hint_at(self, level: int) -> str:
        """The hint of `level` (1..3); LabError for any other level."""
        if not 1 <= level <= len(self.hints):
            raise LabError(f"hint level {level} does not exist; use 1 to {len(self.hints)}")
        return self.hints[level - 1]


@dataclass(frozen=True)
class Stage:
    """One lab stage: the hosts it uses, the role that prepares it, its tasks."""

    id: str
    slug: str
    title: str
    hosts: tuple[str, ...]
    role: str
    page: str
    tasks: tuple[Task, ...]
    requires: tuple[str, ...] = ()
    minutes: int = 0

    @property
    def host_pattern(self) -> str:
        """The stage's hosts as one ansible host pattern."""
        return ":".join(self.hosts)

    def task(self, name: str) -> Task:
        """The task called `name`, or a LabError naming the known ones."""
        for task in self.tasks:
            if task.id == name:
                return task
        known = ", ".join(t.id for t in self.tasks)
        raise LabError(f"unknown task '{name}' in {self.id}; known tasks: {known}")


def _missing(entry: dict, fields: tuple[str, ...], where: str) -> None:
    absent = [f for f in fields if not entry.get(f)]
    if absent:
        raise ValueError(f"{where}: missing {', '.join(absent)}")


def _task(entry: dict, where: str) -> Task:
    _missing(entry, TASK_FIELDS, where)
    hints = entry["hints"]
    if not (isinstance(hints, list) and len(hints) == HINT_LEVELS
            and all(isinstance(h, str) and h.strip() for h in hints)):
        raise ValueError(f"{where}: hints must be a list of {HINT_LEVELS} non-empty texts "
                         "(concept, command to learn, near answer)")
    return Task(str(entry["id"]), str(entry["goal"]), str(entry["check"]), tuple(hints))


def _stage(entry: dict) -> Stage:
    where = f"stage {entry.get('id', '?')}"
    _missing(entry, STAGE_FIELDS, where)
    if not re.fullmatch(r"stage\d+", str(entry["id"])):
        raise ValueError(f"{where}: id must look like stageN")
    hosts = entry["hosts"]
    requires = entry.get("requires")
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ValueError(f"{where}: requires must be a list of stage ids ([] for none)")
    if not isinstance(entry["minutes"], int) or isinstance(entry["minutes"], bool) or entry["minutes"] <= 0:
        raise ValueError(f"{where}: minutes must be a positive whole number (estimated time)")
    tasks = tuple(_task(t, f"{where} task {t.get('id', '?')}") for t in entry["tasks"])
    if len({t.id for t in tasks}) != len(tasks):
        raise ValueError(f"{where}: task ids are not unique")
    return Stage(
        id=entry["id"], slug=str(entry["slug"]), title=str(entry["title"]),
        hosts=(hosts,) if isinstance(hosts, str) else tuple(hosts),
        role=str(entry["role"]), page=str(entry["page"]), tasks=tasks,
        requires=tuple(requires), minutes=entry["minutes"],
    )


class Registry:
    """Every stage, in registry order."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        names = [n for s in stages for n in (s.id, s.slug)]
        if len(set(names)) != len(names):
            raise ValueError("stage ids and slugs must be unique")
        seen: set[str] = set()
        for stage in stages:
            later = [r for r in stage.requires if r not in seen]
            if later:
                raise ValueError(f"stage {stage.id}: requires {', '.join(later)}, which is not an earlier stage")
            seen.add(stage.id)

    def resolve(self, name: str) -> Stage:
        """Find a stage by `stage3`, `3` or its slug; LabError if none matches."""
        wanted = f"stage{name}" if str(name).isdigit() else str(name).lower()
        for stage in self.stages:
            if wanted in (stage.id, stage.slug):
                return stage
        known = ", ".join(f"{s.id} ({s.slug})" for s in self.stages)
        raise LabError(f"unknown stage '{name}'; known stages: {known} — see `lab list`")


def load_registry(path: Path = REGISTRY_PATH) -> Registry:
    """Load and validate the registry file; any problem is a one-line LabError."""
    try:
        data = yaml.safe_load(path.read_text())
        return Registry([_stage(entry) for entry in data["stages"]])
    except FileNotFoundError:
        raise LabError(f"stage registry {path} not found; restore it from git") from None
    except (yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LabError(f"stage registry {path} is invalid: {_one_line(exc)}; fix the file") from exc


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class StageType(click.ParamType):
    """A click parameter that resolves a stage name (or `all` where allowed)."""

    name = "stage"

    def __init__(self, allow_all: bool = False):
        self.allow_all = allow_all

    def convert(self, value, param, ctx):
        """Turn the user's text into a Stage (or the string `all`)."""
        if isinstance(value, Stage) or (self.allow_all and value == "all"):
            return value
        return load_registry().resolve(value)
