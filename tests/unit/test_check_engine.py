"""The check engine with fake hosts: reachability is fatal, every other check runs, exceptions become evidence."""
import sys
import types

import pytest
import testinfra

from lab_tasks.checks import CheckResult, Lab, Verdict, expect
from lab_tasks.errors import LabError
from lab_tasks.registry import Stage, Task
from lab_tasks.check_runner import run_stage

FAKE_MODULE = "lab_tasks.checks.fake_stage"


@pytest.fixture
def fake_checks(monkeypatch):
    """A check module with a passing, a failing and a crashing check, importable by the runner."""
    module = types.ModuleType(FAKE_MODULE)
    module.calls = []

    def passes(lab):
        module.calls.append("passes")
        return expect(lab.host().file("/").is_directory, expected="/ is a directory", found="it is")

    def fails(lab):
        module.calls.append("fails")
        return Verdict(False, "expected x; found y")

    def crashes(lab):
        module.calls.append("crashes")
        raise RuntimeError("probe\nblew up")

    def not_a_verdict(lab):
        return True

    for f in (passes, fails, crashes, not_a_verdict):
        setattr(module, f.__name__, f)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    return module


def make_stage(*check_names):
    tasks = tuple(Task(name, f"goal {name}", f"fake_stage.{name}",
                       (f"hint {name}", f"command {name}", f"near {name}")) for name in check_names)
    return Stage("stage99", "fake", "Fake", ("learner",), "fake_role", "docs/none.md", tasks, (), 10)


class DeadBackend:
    """A backend whose host cannot be reached."""

    def run(self, *args, **kwargs):
        raise OSError("connection refused")


def local_lab(stage):
    return Lab(stage, local=True, connect=lambda name: testinfra.get_host("local://"))


def test_expect_builds_evidence():
    assert expect(1 == 2, expected="a", found="b") == Verdict(False, "expected a; found b")


def test_every_check_runs_even_after_failures(fake_checks):
    stage = make_stage("fails", "crashes", "passes")
    result = run_stage(stage, local_lab(stage))
    assert fake_checks.calls == ["fails", "crashes", "passes"]
    assert [r.passed for r in result.results] == [False, False, True]
    assert not result.passed


def test_exception_is_a_failed_task_with_one_line_evidence(fake_checks):
    stage = make_stage("crashes")
    (result,) = run_stage(stage, local_lab(stage)).results
    assert result == CheckResult("crashes", False, "check raised RuntimeError: probe blew up", "hint crashes")


def test_a_non_verdict_return_is_a_failure(fake_checks):
    stage = make_stage("not_a_verdict")
    (result,) = run_stage(stage, local_lab(stage)).results
    assert not result.passed and "not a Verdict" in result.evidence


def test_unknown_check_function_is_a_failed_task(fake_checks):
    stage = make_stage("missing")
    (result,) = run_stage(stage, local_lab(stage)).results
    assert not result.passed and "AttributeError" in result.evidence


def test_unreachable_host_is_fatal_before_any_check(fake_checks):
    stage = make_stage("passes")
    lab = Lab(stage, connect=lambda name: testinfra.host.Host(DeadBackend()), target="learner1")
    with pytest.raises(LabError, match="unreachable: connection refused; run `lab sandbox up`"):
        run_stage(stage, lab)
    assert fake_checks.calls == []


def test_lab_reads_ports_and_role_defaults(fake_checks):
    lab = local_lab(make_stage("passes"))
    lab.stage = Stage("stage1", "shell", "S", ("learner",), "stage1_shell", "p", ())
    assert lab.ports["ssh"] == 22
    assert lab.vars["stage1_shell_answers_dir"].startswith("/")
    assert lab.hosts() == ["localhost"] and lab.is_local
