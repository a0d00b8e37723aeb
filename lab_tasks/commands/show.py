"""`lab show STAGE`: a stage's goals, hosts and learner page."""
import click
from rich.console import Console

from lab_tasks.commands import stage_heading
from lab_tasks.registry import Stage, StageType


@click.command("show")
@click.argument("stage", type=StageType())
def command(stage: Stage) -> None:
    """Show what a stage asks of you (its tasks' goals), where, and what to read."""
    console = Console()
    console.print(f"[bold]{stage_heading(stage)}[/bold]", highlight=False)
    console.print(f"hosts: {', '.join(stage.hosts)}   page: {stage.page}", highlight=False)
    for task in stage.tasks:
        console.print(f"\n[bold]{task.id}[/bold]\n  {task.goal}", highlight=False)
    console.print(f"\nWhen done: `lab check {stage.id}`; stuck: `lab hint {stage.id} TASK`.",
                  highlight=False, markup=False)
