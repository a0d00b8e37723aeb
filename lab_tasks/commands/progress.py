"""`lab progress`: your path through the stages: what passes, what regressed, what to do next."""
import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lab_tasks import progress
from lab_tasks.commands import App, pass_app

MARKS = {"pass": Text("pass", style="green"), "fail": Text("FAIL", style="bold red")}


@click.command("progress")
@click.option("--json", "as_json", is_flag=True,
              help='Print only JSON: {"learner", "stages": [...], "regressions", "next"}.')
@pass_app
def command(app: App, as_json: bool) -> None:
    """Show your progress per stage, regressions, and the next stage (learner: $OPSLAB_LEARNER or login)."""
    who = progress.learner()
    states = progress.task_states(app.registry, progress.load().get(who, {}))
    upcoming = progress.next_stage(app.registry, states)
    regressed = progress.regressions(states)
    if as_json:
        click.echo(json.dumps(_as_dict(app, who, states, upcoming, regressed), indent=2))
        return
    console = Console()
    console.print(_table(app, who, states), highlight=False)
    for state in regressed:
        console.print(f"regression: {state.stage} {state.task} passed on {state.first_passed} and fails now "
                      f"(checked {state.checked}); `lab check {state.stage}` shows why",
                      style="bold red", highlight=False, markup=False)
    if upcoming is None:
        console.print("every stage passes: the path is done", highlight=False)
    else:
        console.print(f"next: {upcoming.id} ({upcoming.slug}) · {upcoming.title}, about {upcoming.minutes} min "
                      f"— `lab show {upcoming.id}`, then `lab start {upcoming.id}`",
                      highlight=False, markup=False)
    click.echo(f"stored in {progress.state_file()}", err=True)


def _table(app: App, who: str, states: dict) -> Table:
    grid = Table("stage", "done", "task", "first passed", "latest", title=f"progress of {who}",
                 title_justify="left")
    for stage in app.registry.stages:
        mine = states[stage.id]
        grid.add_row(f"{stage.id} ({stage.slug})", f"{sum(s.passing for s in mine)}/{len(mine)}", "", "", "")
        for state in mine:
            latest = MARKS.get(state.last, Text("-"))
            grid.add_row("", "", state.task, state.first_passed or "-", latest)
    return grid


def _as_dict(app: App, who: str, states: dict, upcoming, regressed) -> dict:
    stages = [{"stage": s.id, "done": progress.stage_done(states[s.id]),
               "passing": sum(t.passing for t in states[s.id]), "total": len(s.tasks),
               "tasks": [t.as_dict() for t in states[s.id]]} for s in app.registry.stages]
    return {"learner": who, "stored_in": str(progress.state_file()), "stages": stages,
            "regressions": [{"stage": r.stage, "task": r.task} for r in regressed],
            "next": upcoming.id if upcoming else None}
