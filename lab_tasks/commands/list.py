"""`lab list`: every stage in the registry."""
import click
from rich.console import Console
from rich.table import Table

from lab_tasks.commands import App, pass_app


@click.command("list")
@pass_app
def command(app: App) -> None:
    """List every stage with its hosts and number of tasks."""
    grid = Table("stage", "slug", "title", "hosts", "tasks")
    for stage in app.registry.stages:
        grid.add_row(stage.id, stage.slug, stage.title, ", ".join(stage.hosts), str(len(stage.tasks)))
    Console().print(grid)
