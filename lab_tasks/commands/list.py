"""`lab list`: the learning path: every stage in order, what it builds on, and its estimated time."""
import json

import click
from rich.console import Console
from rich.table import Table

from lab_tasks.commands import App, pass_app
from lab_tasks.registry import Stage


def stage_summary(stage: Stage) -> dict:
    """The JSON shape of one stage in `lab list --json` (and the head of `lab show --json`)."""
    return {"id": stage.id, "slug": stage.slug, "title": stage.title, "hosts": list(stage.hosts),
            "requires": list(stage.requires), "minutes": stage.minutes, "page": stage.page,
            "tasks": [t.id for t in stage.tasks]}


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print only JSON: {"stages": [...]} in path order.')
@pass_app
def command(app: App, as_json: bool) -> None:
    """List the learning path: every stage in order with its prerequisites and estimated time."""
    stages = app.registry.stages
    if as_json:
        click.echo(json.dumps({"stages": [stage_summary(s) for s in stages],
                               "minutes": sum(s.minutes for s in stages)}, indent=2))
        return
    grid = Table("#", "stage", "slug", "title", "requires", "time", "hosts", "tasks",
                 title="the learning path, in order", title_justify="left")
    for number, stage in enumerate(stages, start=1):
        grid.add_row(str(number), stage.id, stage.slug, stage.title, ", ".join(stage.requires) or "-",
                     f"~{stage.minutes} min", ", ".join(stage.hosts), str(len(stage.tasks)))
    console = Console()
    console.print(grid, highlight=False)
    hours = sum(s.minutes for s in stages) / 60
    console.print(f"about {hours:.1f} h in all. Start with `lab show {stages[0].id}`; "
                  "`lab progress` shows where you are.", highlight=False, markup=False)
