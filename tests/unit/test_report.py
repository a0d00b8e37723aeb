"""Report shapes: JSON for one stage and for `all`, and a hint under each failure in the table."""
import json

from rich.console import Console

from lab_tasks import report
from lab_tasks.checks import CheckResult
from lab_tasks.registry import load_registry
from lab_tasks.check_runner import StageResult

STAGE = load_registry().resolve("stage1")
RESULT = StageResult(STAGE, (CheckResult("fhs", True, "expected a; found a", "h1"),
                             CheckResult("glob", False, "expected b; found c", "read man 7 glob")))


def test_json_for_one_stage_has_exactly_the_contract_keys():
    data = json.loads(report.to_json([RESULT], many=False))
    assert set(data) == {"stage", "tasks"} and data["stage"] == "stage1"
    assert data["tasks"][1] == {"id": "glob", "passed": False, "evidence": "expected b; found c",
                                "hint": "read man 7 glob", "more": "lab hint stage1 glob --level 2"}
    assert "more" not in data["tasks"][0], "a passed task needs no next hint"


def test_json_for_all_wraps_stages():
    data = json.loads(report.to_json([RESULT, RESULT], many=True))
    assert list(data) == ["stages"] and len(data["stages"]) == 2


def test_table_shows_hint_only_under_failures():
    console = Console(record=True, width=200)
    report.print_results([RESULT], console)
    text = console.export_text()
    assert "hint: read man 7 glob" in text and "hint: h1" not in text
    assert "`lab hint stage1 glob --level 2` for more" in text and "stage1 fhs --level" not in text
    assert "[1/2] tasks pass" in text
