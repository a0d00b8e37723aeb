"""Reading a playbook run through ansible-runner: the failed task and host from its events, the
per-host counts from its stats, and a real run on this machine that leaves nothing behind."""
import io
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from lab_tasks import ansible
from lab_tasks.ansible import HostStats, PlaybookRun, _failure_line
from lab_tasks.errors import LabError
from lab_tasks.registry import PROJECT_ROOT, load_registry


def event(name, **data):
    return {"event": name, "stdout": "", "event_data": data}


COPY_TASK = dict(role="stage1_shell", task="Install each drop file where the FHS puts it", host="learner1")
FAILED_LOOP = [
    event("playbook_on_task_start", role="stage1_shell", task=COPY_TASK["task"]),
    event("runner_item_on_ok", **COPY_TASK, res={"changed": True, "item": {"key": "lab-tool"}}),
    event("runner_item_on_failed", **COPY_TASK,
          res={"msg": "Destination directory /usr/local/share/man/man1 does not exist", "item": {"key": "lab-tool.1"}}),
    event("runner_on_failed", **COPY_TASK, res={"msg": "One or more items failed", "results": []}),
]
FAILED_LOOP_STATS = {"ok": {"learner1": 2, "localhost": 2}, "changed": {"learner1": 1}, "failures": {"learner1": 1},
                     "dark": {}, "skipped": {}, "rescued": {}, "ignored": {}, "processed": {"learner1": 1, "localhost": 1}}
UNREACHABLE = [
    event("playbook_on_task_start", task="Gathering Facts"),
    event("runner_on_unreachable", task="Gathering Facts", host="learner1",
          res={"unreachable": True, "msg": "Task failed: Failed to connect to the host via ssh: timed out"}),
]


def feed(events, stats=None):
    run = PlaybookRun()
    for each in events:
        run.feed(each)
    run.count(stats)
    return run


def test_failed_task_host_and_reason_are_found():
    run = feed(FAILED_LOOP, FAILED_LOOP_STATS)
    assert run.failure == ("stage1_shell : Install each drop file where the FHS puts it", "learner1", "failed",
                           "Destination directory /usr/local/share/man/man1 does not exist")
    assert run.changed == {"learner1": 1, "localhost": 0}
    assert run.hosts["learner1"] == HostStats(ok=2, changed=1, failed=1)


def test_unreachable_failure_line_points_at_the_sandbox():
    stage = load_registry().resolve("stage1")
    line = _failure_line(stage, "prepare", 4, feed(UNREACHABLE))
    assert "at task 'Gathering Facts' on learner1 (unreachable)" in line
    assert "timed out" in line and line.endswith("run `lab sandbox up`")
    assert "\n" not in line


def test_an_ignored_failure_is_not_the_failure():
    ignored = event("runner_on_failed", task="Probe", host="learner1", ignore_errors=True, res={"msg": "no"})
    assert feed([ignored, *UNREACHABLE]).failure.task == "Gathering Facts"


def test_a_failed_command_names_its_stderr():
    failed = event("runner_on_failed", task="Reload", host="lb1",
                   res={"msg": "non-zero return code", "rc": 1, "stderr": "nginx: [emerg] unknown directive\n"})
    assert feed([failed]).failure.message == "non-zero return code: nginx: [emerg] unknown directive"


def test_no_stats_means_no_hosts():
    assert feed([], None).hosts == {}


PLAYBOOK = """
- name: A stand-in for the stage playbook
  hosts: all
  gather_facts: false
  tasks:
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
    - name: Fail where it is asked to
      ansible.builtin.fail:
        msg: "asked to fail in {{ opslab_stage_mode }}"
      when: opslab_stage_mode == 'reset'
"""


@pytest.fixture
def local_stage_playbook(tmp_path, monkeypatch):
    """playbooks/stage.yml swapped for a local one, on an inventory of this machine."""
    playbook = tmp_path / "stage.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"all:\n  hosts:\n    here:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {os.path.realpath(sys.executable)}\n")
    monkeypatch.setattr(ansible, "STAGE_PLAYBOOK", playbook)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return inventory, tmp_path


def test_a_real_run_streams_output_and_counts_per_host(local_stage_playbook):
    inventory, tmp_path = local_stage_playbook
    echo = io.StringIO()
    run = ansible.run_stage_playbook(load_registry().resolve("stage1"), "solve", inventory, echo=echo)
    assert run.hosts == {"here": HostStats(ok=1, changed=1, skipped=1)}
    assert "TASK [Change something]" in echo.getvalue() and "PLAY RECAP" in echo.getvalue()
    assert "\r" not in echo.getvalue()
    assert not list(tmp_path.glob("opslab-ansible-*")), "the runner's private dir was left behind"
    # ansible-runner's private-dir layout, which must not appear in the project it runs from
    assert [name for name in ("artifacts", "env", "project") if (PROJECT_ROOT / name).exists()] == []


def test_a_real_failed_run_is_one_error_line(local_stage_playbook):
    inventory, _ = local_stage_playbook
    with pytest.raises(LabError) as error:
        ansible.run_stage_playbook(load_registry().resolve("stage1"), "reset", inventory, echo=io.StringIO())
    assert str(error.value) == ("ansible-playbook reset of stage1 failed at task 'Fail where it is asked to' on here "
                                "(failed): asked to fail in reset; fix it, then rerun (details above)")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live (not zombie) processes that contain `text`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            zombie = " Z " in (proc / "stat").read_text().rsplit(")", 1)[1][:4]
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(cmdline)
    return found


class InterruptOnceStarted(io.StringIO):
    """Output that presses Ctrl-C (SIGINT to this process) once the long task has started."""

    def write(self, text):
        if "TASK [Sleep]" in text:
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        return super().write(text)


def test_ctrl_c_stops_the_playbook_and_its_workers(local_stage_playbook):
    inventory, tmp_path = local_stage_playbook
    ansible.STAGE_PLAYBOOK.write_text(
        "- name: Long\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Sleep\n      ansible.builtin.command: sleep 37.5\n      changed_when: false\n")
    echo = InterruptOnceStarted()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ansible.run_stage_playbook(load_registry().resolve("stage1"), "solve", inventory, echo=echo)
    assert time.monotonic() - started < 30
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == [] and processes_mentioning("sleep 37.5") == []
