"""`lab hint STAGE [TASK] [--level N]`: hints that teach, from the concept (1) to a near answer (3)."""
import json

import click

from lab_tasks.registry import HINT_LEVELS, Stage, StageType, Task


def next_hint_command(stage: Stage, task: Task, level: int) -> str | None:
    """The command that shows the next hint level, or None after the last one."""
    return f"lab hint {stage.id} {task.id} --level {level + 1}" if level < HINT_LEVELS else None


@click.command("hint")
@click.argument("stage", type=StageType())
@click.argument("task", required=False)
@click.option("--level", "-l", type=int, default=1, show_default=True,
              help=f"1: the concept and where to read; 2: the command to learn; {HINT_LEVELS}: a near answer.")
@click.option("--json", "as_json", is_flag=True,
              help='Print only JSON: {"stage", "level", "hints": [{"task", "level", "levels", "hint", "more"}]}.')
def command(stage: Stage, task: str | None, level: int, as_json: bool) -> None:
    """Print a hint for one task, or the given level (default 1) for every task of the stage."""
    tasks = [stage.task(task)] if task else list(stage.tasks)
    hints = [{"task": t.id, "level": level, "levels": HINT_LEVELS, "hint": t.hint_at(level),
              "more": next_hint_command(stage, t, level)} for t in tasks]
    if as_json:
        click.echo(json.dumps({"stage": stage.id, "level": level, "hints": hints}, indent=2))
        return
    for hint in hints:
        click.echo(f"{hint['task']} (hint {level}/{HINT_LEVELS}): {' '.join(hint['hint'].split())}")
    if task and hints[0]["more"]:
        click.echo(f"more: `{hints[0]['more']}`")
    elif not task and level < HINT_LEVELS:
        click.echo(f"more: `lab hint {stage.id} TASK --level {level + 1}`")
