"""`lab start STAGE`: plant the stage's exercise on its hosts."""
from lab_tasks.commands import playbook_command

command = playbook_command(
    "start", "prepare", "Prepare the stage on its lab hosts (the stage role's prepare.yml).",
    "{stage} is ready: `lab show {stage}` lists the tasks.")
