"""No hint level and no evidence line hands over the answer.

What is screened, per stage:
- the solution, DERIVED from the stage role's solve tasks by tests/unit/solutions.py (command lines and
  their arguments, file contents from copy/template/lineinfile/blockinfile/replace, cron lines, modes, ACL
  entries, systemd verbs, other modules' arguments; included tasks and roles followed; rendered with the
  role's variables for every stage host). Tasks that only write a registered command's output are skipped
  there (their command is screened instead), so the answer DATA a tool computes at solve time (stage 1's
  file list, stage 4's report rows) is not a fragment: the stage 1 and 4 checks never print expected paths
  or rows, which their near-miss tests pin. Anything the stage's goals state is public.
- all three hint levels of every task, and the stage's learner page (docs/stages/);
- every evidence string the checks produce on the stage's recorded states (tests/unit/hoststates_<stage>.py:
  the solved state, the planted state where recorded, every near miss). Coverage of evidence is therefore
  the recorded states: a branch of a check no recorded state reaches is not screened (the near-miss test
  requires at least one state per task, most tasks have several).
"""
import re

import pytest

import solutions
from hoststates import state_module
from lab_tasks.check_runner import run_task
from lab_tasks.registry import PROJECT_ROOT, load_registry

STAGES = load_registry().stages
# Work in progress, per screen and stage, with who does it. Strict xfails: a stage that becomes clean
# fails here until it is taken off its list.
PENDING = {
    "hints": {
    },
    "tiers": {
    },
    "pages": {
    },
    "evidence": {
    },
}
# Fragments of a solution that are plumbing any answer shares, per stage, with why.
PUBLIC: dict[str, dict[str, str]] = {
    "stage2": {"/home/alice": "alice's home directory, which the goal names in words"},
}


def _norm(text: str) -> str:
    return " ".join(text.replace("`", "").replace("'", "").replace('"', "").split())


def _contains(text: str, fragment: str) -> bool:
    """`fragment` in `text` as whole words (`start mariadb` is not in `restart mariadb`)."""
    return fragment in text and re.search(rf"(?<!\w){re.escape(fragment)}(?!\w)", text) is not None


def _params(screen_name: str):
    pending = PENDING[screen_name]
    return [pytest.param(s, id=s.id, marks=[pytest.mark.xfail(reason=pending[s.id], strict=True)]
                         if s.id in pending else []) for s in STAGES]


def screen(stage, texts: dict[str, str]) -> list[str]:
    """Every (where, fragment) where a text contains a solution fragment the goals do not state."""
    derived = solutions.derive(stage)
    goals = _norm(" ".join(t.goal for t in stage.tasks))
    public = PUBLIC.get(stage.id, {})
    fragments = [f for f in derived.fragments if _norm(f) and _norm(f) not in goals and f not in public]
    modes = [m for m in derived.modes if not re.search(rf"(?<![0-9A-Za-z])0?{m}(?![0-9A-Za-z])", goals)]
    leaks = []
    for where, text in texts.items():
        plain = _norm(text)
        leaks += [f"{where}: {f!r} ({derived.fragments[f]})" for f in fragments if _contains(plain, _norm(f))]
        leaks += [f"{where}: mode {m} ({derived.modes[m]})" for m in modes
                  if re.search(rf"(?<![0-9A-Za-z])0?{m}(?![0-9A-Za-z])", text)]
    return leaks


def evidence_texts(stage, tmp_path) -> dict[str, str]:
    """Every evidence string the checks give on the stage's recorded states."""
    module = state_module(stage.id)
    assert module is not None, f"tests/unit/hoststates_{stage.id}.py is missing: no evidence to screen"
    texts = {}
    for name in ("solved", "planted"):
        build = getattr(module, name, None)
        if build:
            lab = build(tmp_path / name)
            for task in stage.tasks:
                texts[f"{name} {task.id}"] = run_task(task, lab).evidence
    for number, miss in enumerate(module.NEAR_MISSES):
        lab = miss.lab(tmp_path / f"miss{number}")
        texts[f"{miss.task} near miss '{miss.mistake}'"] = run_task(stage.task(miss.task), lab).evidence
    return texts


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_the_solution_can_be_derived(stage):
    derived = solutions.derive(stage)
    assert derived.fragments, f"nothing derived from roles/{stage.role}/tasks/solve.yml"


@pytest.mark.parametrize("stage", _params("hints"))
def test_no_hint_level_contains_the_solution(stage):
    texts = {f"{t.id} hint {level}": hint for t in stage.tasks for level, hint in enumerate(t.hints, 1)}
    assert screen(stage, texts) == []


@pytest.mark.parametrize("stage", _params("pages"))
def test_no_learner_page_contains_the_solution(stage):
    assert screen(stage, {stage.page: (PROJECT_ROOT / stage.page).read_text()}) == []


@pytest.mark.parametrize("stage", _params("tiers"))
def test_hint_levels_differ(stage):
    assert [t.id for t in stage.tasks if len(set(t.hints)) != 3] == []


@pytest.mark.parametrize("stage", _params("evidence"))
def test_no_evidence_contains_the_solution(stage, tmp_path):
    assert screen(stage, evidence_texts(stage, tmp_path)) == []


def test_screen_catches_each_kind_of_fragment():
    stage3 = load_registry().resolve("stage3")
    stage2 = load_registry().resolve("stage2")
    assert screen(stage3, {"cron line": "type `*/10 * * * * /usr/local/bin/backup-notes.sh`"})
    assert screen(stage3, {"unit line": "add Persistent=true under [Timer]"})
    assert screen(stage3, {"systemd verb": "systemctl enable --now notes-report.timer"})
    assert screen(stage2, {"mode": "expected /srv/devs 2770 root:devs"})
    assert screen(stage2, {"acl": "setfacl -m u:carol:rx /srv/audit"})
    assert screen(stage2, {"template": "%devs ALL=(root) NOPASSWD: /usr/bin/systemctl restart cron"})
    assert not screen(stage3, {"goal words": "runs every 5 minutes; the goal asks for every 10"})
    assert not screen(stage2, {"stated by the goal": "/etc/sudoers.d/devs is 0640; the goal asks for 0440"})
