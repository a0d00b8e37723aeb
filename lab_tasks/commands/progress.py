"""`lab progress`: which tasks you have passed, and when each first passed."""
import click
from rich.console import Console
from rich.table import Table

from lab_tasks import progress
from lab_tasks.commands import App, pass_app


@click.command("progress")
@pass_app
def command(app: App) -> None:
    """Show your progress per stage (learner: $OPSLAB_LEARNER or your login)."""
    mine = progress.load().get(progress.learner(), {})
    grid = Table("stage", "done", "task", "first passed", title=f"progress of {progress.learner()}",
                 title_justify="left")
    for stage in app.registry.stages:
        passed = mine.get(stage.id, {})
        grid.add_row(stage.id, f"{sum(t.id in passed for t in stage.tasks)}/{len(stage.tasks)}", "", "")
        for task in stage.tasks:
            grid.add_row("", "", task.id, passed.get(task.id, "-"))
    Console().print(grid)
    click.echo(f"stored in {progress.state_file()}", err=True)
