"""CLI parsing and errors: bad input is one `Error:` line, exit 2, no traceback."""
import json
import socket
import subprocess
import sys

import pytest

from lab_tasks.cli import main
from lab_tasks.registry import PROJECT_ROOT, load_registry


def lab(capsys, *args):
    """Run `lab ARGS` in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def free_loopback_port(address="127.0.0.2"):
    """A port on which nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    learner:\n      hosts:\n        learner1:\n"
                    f"          ansible_host: 127.0.0.2\n          ansible_port: {free_loopback_port()}\n")
    return path


@pytest.mark.parametrize("args, fragments", [
    (["check", "nope"], ["unknown stage 'nope'", "lab list"]),
    (["show", "99"], ["unknown stage '99'"]),
    (["hint", "stage1", "nope"], ["unknown task 'nope' in stage1"]),
    (["-i", "/nonexistent/hosts.yml", "check", "stage1"], ["inventory /nonexistent/hosts.yml not found",
                                                          "lab sandbox up"]),
    (["check", "1", "-i", "/nonexistent/hosts.yml"], ["not found"]),
    (["start", "shell", "-i", "/nonexistent/hosts.yml"], ["not found"]),
])
def test_bad_input_is_one_line_exit_2(capsys, args, fragments):
    code, _, err = lab(capsys, *args)
    assert_one_line_error(code, err, *fragments)


def test_broken_inventory(capsys, tmp_path):
    broken = tmp_path / "hosts.yml"
    broken.write_text("all: [::\n")
    code, _, err = lab(capsys, "-i", str(broken), "check", "stage1")
    assert_one_line_error(code, err, "is broken", "lab sandbox up")


def test_unreachable_host_names_it(capsys, unreachable_inventory):
    code, out, err = lab(capsys, "-i", str(unreachable_inventory), "check", "stage1", "--json")
    assert_one_line_error(code, err, "host learner1", "unreachable", "lab sandbox up")
    assert out == ""


def test_unknown_host_option(capsys, unreachable_inventory):
    code, _, err = lab(capsys, "-i", str(unreachable_inventory), "check", "stage1", "--host", "ghost")
    assert_one_line_error(code, err, "host 'ghost' is not in inventory")


def test_debug_shows_the_traceback(capsys):
    code, _, err = lab(capsys, "--debug", "check", "nope")
    assert code == 2 and "Traceback" in err and "Error: unknown stage 'nope'" in err


def test_list_show_and_hint(capsys):
    code, out, _ = lab(capsys, "list")
    assert code == 0 and "stage1" in out and "shell" in out
    code, out, _ = lab(capsys, "show", "shell")
    assert code == 0 and "glob" in out and "lab check stage1" in out
    code, out, _ = lab(capsys, "hint", "1", "glob")
    glob = load_registry().resolve("stage1").task("glob")
    assert code == 0 and out.startswith(f"glob (hint 1/3): {' '.join(glob.hints[0].split())}")
    assert "`lab hint stage1 glob --level 2`" in out


def test_hint_levels(capsys):
    glob = load_registry().resolve("stage1").task("glob")
    code, out, _ = lab(capsys, "hint", "stage1", "glob", "--level", "3")
    assert code == 0 and " ".join(glob.hints[2].split()) in out and "more" not in out
    code, out, _ = lab(capsys, "hint", "stage1")
    assert code == 0 and out.count("(hint 1/3)") == len(load_registry().resolve("stage1").tasks)
    code, _, err = lab(capsys, "hint", "stage1", "glob", "--level", "4")
    assert_one_line_error(code, err, "hint level 4 does not exist; use 1 to 3")


def test_machine_readable_outputs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    registry = load_registry()
    code, out, _ = lab(capsys, "list", "--json")
    listed = json.loads(out)["stages"]
    assert code == 0 and [s["id"] for s in listed] == [s.id for s in registry.stages]
    assert listed[0]["requires"] == [] and all(s["minutes"] > 0 for s in listed)
    code, out, _ = lab(capsys, "show", "stage3", "--json")
    shown = json.loads(out)
    assert shown["id"] == "stage3" and shown["tasks"][0] == {
        "id": "user-crontab", "goal": registry.resolve("stage3").task("user-crontab").goal}
    code, out, _ = lab(capsys, "hint", "stage3", "--json")
    hints = json.loads(out)
    assert hints["level"] == 1 and hints["hints"][0]["more"] == "lab hint stage3 user-crontab --level 2"
    code, out, _ = lab(capsys, "hint", "stage3", "user-crontab", "--level", "3", "--json")
    assert json.loads(out)["hints"][0]["more"] is None
    code, out, _ = lab(capsys, "progress", "--json")
    data = json.loads(out)
    assert code == 0 and data["next"] == "stage1" and data["regressions"] == []
    assert [s["stage"] for s in data["stages"]] == [s.id for s in registry.stages]


def test_list_shows_the_path_with_prerequisites_and_times(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = lab(capsys, "list")
    assert code == 0 and "requires" in out and "~45 min" in out and "stage1, stage2" in out


def test_progress_lists_every_stage(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    code, out, err = lab(capsys, "progress")
    assert code == 0 and "stage1" in out and str(tmp_path) in err
    assert "next: stage1 (shell)" in out


def test_progress_shows_regressions(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("OPSLAB_LEARNER", "ada")
    monkeypatch.setenv("COLUMNS", "300")
    (tmp_path / "progress.json").write_text(json.dumps({"ada": {"stage1": {
        "glob": {"first_passed": "2024-01-01T00:00:00+00:00", "last": "fail",
                 "checked": "2024-02-01T00:00:00+00:00"}}}}))
    code, out, _ = lab(capsys, "progress")
    assert code == 0 and "regression: stage1 glob passed on 2024-01-01T00:00:00+00:00 and fails now" in out
    code, out, _ = lab(capsys, "progress", "--json")
    assert json.loads(out)["regressions"] == [{"stage": "stage1", "task": "glob"}]


def test_local_check_json_is_only_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLAB_STATE_DIR", str(tmp_path))
    code, out, _ = lab(capsys, "check", "stage1", "--local", "--json")
    data = json.loads(out)
    assert code == (0 if all(t["passed"] for t in data["tasks"]) else 1)
    assert data["stage"] == "stage1" and [t["id"] for t in data["tasks"]][:2] == ["fhs", "glob"]


def test_cli_does_not_import_torch():
    probe = "import sys, lab_tasks.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_no_learner_command_prints_the_worked_solutions():
    sources = [p for p in (PROJECT_ROOT / "lab_tasks").rglob("*.py")]
    assert [p for p in sources if "docs/solutions" in p.read_text()] == []
    assert (PROJECT_ROOT / "docs" / "solutions" / "README.md").is_file()
