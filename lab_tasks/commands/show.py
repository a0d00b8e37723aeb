"""`lab show STAGE`: a stage's goals, hosts, prerequisites and learner page."""
import json

import click
from rich.console import Console

from lab_tasks.commands import stage_heading
from lab_tasks.commands.list import stage_summary
from lab_tasks.registry import Stage, StageType


@click.command("show")
@click.argument("stage", type=StageType())
@click.option("--json", "as_json", is_flag=True,
              help='Print only JSON: the stage (as in `lab list --json`) with "tasks": [{"id", "goal"}].')
def command(stage: Stage, as_json: bool) -> None:
    """Show what a stage asks of you (its tasks' goals), where, and what to read."""
    if as_json:
        data = stage_summary(stage) | {"tasks": [{"id": t.id, "goal": t.goal} for t in stage.tasks]}
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(f"[bold]{stage_heading(stage)}[/bold]", highlight=False)
    console.print(f"hosts: {', '.join(stage.hosts)}   page: {stage.page}", highlight=False)
    console.print(f"builds on: {', '.join(stage.requires) or 'nothing'}   time: about {stage.minutes} min",
                  highlight=False)
    for task in stage.tasks:
        console.print(f"\n[bold]{task.id}[/bold]\n  {task.goal}", highlight=False)
    console.print(f"\nGet onto a host: `lab sandbox ssh HOST`. When done: `lab check {stage.id}`; "
                  f"stuck: `lab hint {stage.id} TASK` (add --level 2, then 3, for more).",
                  highlight=False, markup=False)
