"""Show check results: a rich table with the first hint level under each failure, or plain JSON."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lab_tasks.check_runner import StageResult


def more_command(result: StageResult, task_id: str) -> str:
    """The command that shows a failed task's next hint level."""
    return f"lab hint {result.stage.id} {task_id} --level 2"


def as_dict(result: StageResult) -> dict:
    """`{"stage": id, "tasks": [{"id", "passed", "evidence", "hint"[, "more"]}]}` for one stage.

    `hint` is the first hint level; a failed task also has `more`, the command for the next level."""
    tasks = []
    for r in result.results:
        task = {"id": r.task_id, "passed": r.passed, "evidence": r.evidence, "hint": r.hint}
        if not r.passed:
            task["more"] = more_command(result, r.task_id)
        tasks.append(task)
    return {"stage": result.stage.id, "tasks": tasks}


def to_json(results: list[StageResult], many: bool) -> str:
    """One stage's dict, or `{"stages": [...]}` for `lab check all`."""
    if many:
        return json.dumps({"stages": [as_dict(r) for r in results]}, indent=2)
    return json.dumps(as_dict(results[0]), indent=2)


def table(result: StageResult) -> Table:
    """One row per task; a failed task gets its first hint level and the command for the next."""
    stage = result.stage
    grid = Table(title=f"{stage.id} · {stage.title}", title_justify="left", show_lines=True)
    grid.add_column("task", style="bold")
    grid.add_column("result")
    grid.add_column("evidence / hint", overflow="fold")
    for r in result.results:
        mark = Text("PASS", style="green") if r.passed else Text("FAIL", style="bold red")
        detail = Text(r.evidence)
        if not r.passed:
            detail.append(f"\nhint: {r.hint}", style="yellow")
            detail.append(f"\n`{more_command(result, r.task_id)}` for more", style="dim")
        grid.add_row(r.task_id, mark, detail)
    return grid


def summary(result: StageResult) -> str:
    """`[n/total] tasks pass` line under the table."""
    done = sum(r.passed for r in result.results)
    return f"{result.stage.id}: [{done}/{len(result.results)}] tasks pass"


def print_results(results: list[StageResult], console: Console | None = None) -> None:
    """Tables and summaries for people."""
    console = console or Console()
    for result in results:
        console.print(table(result))
        console.print(summary(result))
