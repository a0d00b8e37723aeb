"""Reading ansible-playbook's output: the failed task and host, and the recap's changed counts."""
from lab_tasks.ansible import PlaybookRun, _failure_line
from lab_tasks.registry import load_registry

OUTPUT = """
TASK [stage1_shell : Install each drop file where the FHS puts it] *************
changed: [learner1] => (item={'key': 'lab-tool'})
[ERROR]: Task failed: Module failed: Destination directory /usr/local/share/man/man1 does not exist
Origin: /work/main/roles/stage1_shell/tasks/solve.yml:3:3
failed: [learner1] (item={'key': 'lab-tool.1'}) =>
    msg: Destination directory /usr/local/share/man/man1 does not exist

PLAY RECAP *********************************************************************
learner1                   : ok=2    changed=1    unreachable=0    failed=1    skipped=0    rescued=0
localhost                  : ok=2    changed=0    unreachable=0    failed=0    skipped=0    rescued=0
"""
UNREACHABLE = """
TASK [Gathering Facts] *********************************************************
fatal: [learner1]: UNREACHABLE! => changed=false
  msg: 'Failed to connect to the host via ssh: timed out'
"""


def feed(text):
    run = PlaybookRun()
    for line in text.splitlines():
        run.feed(line)
    return run


def test_failed_task_host_and_reason_are_found():
    run = feed(OUTPUT)
    assert run.failure == ("stage1_shell : Install each drop file where the FHS puts it", "learner1", "failed",
                           "Module failed: Destination directory /usr/local/share/man/man1 does not exist")
    assert run.changed == {"learner1": 1, "localhost": 0}


def test_unreachable_failure_line_points_at_the_sandbox():
    stage = load_registry().resolve("stage1")
    line = _failure_line(stage, "prepare", 4, feed(UNREACHABLE))
    assert "at task 'Gathering Facts' on learner1 (unreachable)" in line
    assert "timed out" in line and line.endswith("run `lab sandbox up`")
    assert "\n" not in line
