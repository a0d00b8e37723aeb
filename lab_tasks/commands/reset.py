"""`lab reset STAGE`: undo your work and prepare the stage again."""
from lab_tasks.commands import playbook_command

command = playbook_command(
    "reset", "reset", "Undo your work and restore the stage's prepared state (the role's reset.yml).",
    "{stage} is back in its prepared state.")
