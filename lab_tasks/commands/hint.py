"""`lab hint STAGE [TASK]`: the hints that teach each task's commands."""
import click

from lab_tasks.registry import Stage, StageType


@click.command("hint")
@click.argument("stage", type=StageType())
@click.argument("task", required=False)
def command(stage: Stage, task: str | None) -> None:
    """Print the hint of one task, or of every task of the stage."""
    tasks = [stage.task(task)] if task else stage.tasks
    for t in tasks:
        click.echo(f"{t.id}: {t.hint}")
