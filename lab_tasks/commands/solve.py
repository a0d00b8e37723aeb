"""`lab solve STAGE`: apply the reference solution (for instructors and tests)."""
from lab_tasks.commands import playbook_command

command = playbook_command(
    "solve", "solve", "Apply the stage's reference solution (the role's solve.yml).",
    "{stage} solved: `lab check {stage}` should pass now.")
