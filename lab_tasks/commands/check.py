"""`lab check STAGE|all`: run the read-only self-checks; exit 0 all pass, 1 some fail, 2 bad input."""
from __future__ import annotations

import click

from lab_tasks import progress, report
from lab_tasks.checks import Lab
from lab_tasks.commands import App, inventory_option, pass_app
from lab_tasks.registry import Stage, StageType
from lab_tasks.check_runner import StageResult, run_stage


@click.command("check")
@click.argument("stage", type=StageType(allow_all=True))
@click.option("--json", "as_json", is_flag=True,
              help='Print only JSON: {"stage", "tasks": [...]}; for `all`: {"stages": [...]}.')
@click.option("--host", "target", metavar="HOST", help="Check this inventory host instead of the stage's.")
@click.option("--local", is_flag=True, help="Check this machine (your own VM) instead of lab hosts.")
@inventory_option
@pass_app
@click.pass_context
def command(ctx: click.Context, app: App, stage: Stage | str, as_json: bool,
            target: str | None, local: bool) -> None:
    """Check a stage's tasks (or `all` stages) and show evidence and hints."""
    stages = app.registry.stages if stage == "all" else [stage]
    results = [check_one(app, s, target, local) for s in stages]
    progress.record(results)
    if as_json:
        click.echo(report.to_json(results, many=stage == "all"))
    else:
        report.print_results(results)
    ctx.exit(0 if all(r.passed for r in results) else 1)


def check_one(app: App, stage: Stage, target: str | None, local: bool) -> StageResult:
    """Run one stage's checks against the inventory hosts (or this machine)."""
    lab = Lab(stage, None if local else app.inventory, target=target, local=local)
    try:
        return run_stage(stage, lab)
    finally:
        lab.close()
