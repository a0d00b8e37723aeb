"""Pure logic of the stage 2-4 checks, the stage 4 data generator and the reference script.

No lab host: the parsers and report recomputations run on the generated data and on
sample command output; the reference count-status.sh runs locally under bash.
"""
import importlib.util
import random
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from lab_tasks.checks import stage2_users, stage3_cron, stage4_text

ROOT = Path(__file__).resolve().parents[2]
STAGE4_FILES = ROOT / "roles" / "stage4_text" / "files"
STAGE3_ROLE = ROOT / "roles" / "stage3_cron"
SEED, LINES = 20260314, 6000


def _generator():
    spec = importlib.util.spec_from_file_location("gen_text_data", STAGE4_FILES / "gen_text_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


@pytest.fixture(scope="module")
def log_text() -> str:
    return "\n".join(GEN.access_log(random.Random(SEED), LINES)) + "\n"


@pytest.fixture(scope="module")
def requests(log_text):
    return stage4_text.parse_log(log_text)


# --- stage 4: data generator -------------------------------------------------------------------

def test_generator_is_deterministic_and_seed_dependent():
    first = GEN.access_log(random.Random(SEED), 500)
    assert first == GEN.access_log(random.Random(SEED), 500)
    assert first != GEN.access_log(random.Random(SEED + 1), 500)


def test_every_generated_line_parses(requests):
    assert len(requests) == LINES


def test_timestamps_are_in_order(requests):
    stamps = [r.line.split("[", 1)[1][:20] for r in requests]
    assert stamps == sorted(stamps)


def test_top_ten_has_one_right_answer(requests):
    counts = sorted((int(n) for n, _ in stage4_text.top_client_rows(requests, 11)), reverse=True)
    assert len(set(counts)) == 11, "ties around the top 10 would make several answers right"


def test_generator_cli_writes_the_same_file(tmp_path, log_text):
    out = tmp_path / "access.log"
    assert GEN.main(["gen", "access-log", str(out), str(SEED), str(LINES)]) == 0
    assert out.read_text() == log_text
    assert GEN.main(["gen", "nonsense", str(out), "1", "1"]) == 2


# --- stage 4: report recomputation -------------------------------------------------------------

def test_errors_window_only_5xx_of_that_hour(requests):
    lines = stage4_text.errors_in_hour(requests, "14/Mar/2026", "14")
    assert lines, "the window must not be empty"
    for line in lines:
        assert ":14:" in line.split("]")[0] and line.split('"')[2].split()[0].startswith("5")


def test_status_rows_sorted_and_complete(requests):
    status_rows = stage4_text.status_rows(requests)
    assert [int(s) for s, _ in status_rows] == sorted(int(s) for s, _ in status_rows)
    assert sum(int(n) for _, n in status_rows) == LINES


def test_bytes_per_hour_covers_the_day(requests):
    hours = stage4_text.bytes_per_hour_rows(requests)
    assert [h for h, _ in hours] == [f"{h:02d}" for h in range(24)]
    assert sum(int(b) for _, b in hours) == sum(r.size for r in requests)


def test_region_revenue_skips_header_and_sums():
    csv = "date,region,product,units,unit_price\n2026-03-01,west,a,2,10\n2026-03-02,east,b,1,5\n" \
          "2026-03-03,west,c,3,1\n"
    assert stage4_text.region_revenue_rows(csv) == [("east", "5"), ("west", "23")]


def test_rows_ignore_spacing_but_first_difference_sees_order():
    assert stage4_text.rows("  412 1.2.3.4\n\n 377   5.6.7.8 \n") == [("412", "1.2.3.4"), ("377", "5.6.7.8")]
    expected = [("1", "a"), ("2", "b")]
    assert stage4_text.first_difference(expected, expected) == ""
    assert "not in the order" in stage4_text.first_difference(expected, expected[::-1])
    assert "1 rows; the goal asks for 2" in stage4_text.first_difference(expected, expected[:1])
    assert "row 2 ('2 c') is wrong" in stage4_text.first_difference(expected, [("1", "a"), ("2", "c")])
    assert "other way round" in stage4_text.first_difference(expected, [("a", "1"), ("b", "2")], "N X")


# --- stage 4: sed task -------------------------------------------------------------------------

ORIGINAL_CONF = (STAGE4_FILES / "app.conf").read_text()


def _edit(text: str, old: str, new: str) -> str:
    return "\n".join(new if line == old else line for line in text.split("\n"))


def test_config_right_edit_passes():
    edited = _edit(_edit(ORIGINAL_CONF, "listen_port = 8080", "listen_port = 9090"),
                   "debug = true", "#debug = true")
    assert stage4_text.config_problem(ORIGINAL_CONF, edited) == ""


def test_config_global_substitution_is_caught():
    edited = _edit(ORIGINAL_CONF.replace("8080", "9090"), "debug = true", "# debug = true")
    assert "only listen_port and debug change" in stage4_text.config_problem(ORIGINAL_CONF, edited)


def test_config_deleting_instead_of_commenting_is_caught():
    edited = _edit(ORIGINAL_CONF, "listen_port = 8080", "listen_port = 9090")
    edited = "\n".join(line for line in edited.split("\n") if line != "debug = true")
    assert "lines, expected" in stage4_text.config_problem(ORIGINAL_CONF, edited)


def test_config_untouched_fails():
    assert stage4_text.config_problem(ORIGINAL_CONF, ORIGINAL_CONF) != ""


# --- stage 4: the reference script against the check's cases ------------------------------------

@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("awk") is None, reason="needs bash and awk")
def test_reference_script_passes_every_case(tmp_path, log_text, requests):
    log = tmp_path / "access.log"
    log.write_text(log_text)
    for case in stage4_text.script_cases(str(log), requests):
        run = subprocess.run([str(STAGE4_FILES / "count-status.sh"), *case[0]], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=30)
        assert stage4_text.case_problem(case, run.returncode, run.stdout, run.stderr) == "", case


def test_case_problem_reports_wrong_exit_and_missing_usage():
    case = ([], 2, "usage")
    assert stage4_text.case_problem(case, 2, "", "Usage: x LOG STATUS") == ""
    assert "exited 1" in stage4_text.case_problem(case, 1, "", "usage: x")
    assert stage4_text.case_problem(case, 2, "usage", "") != ""
    assert stage4_text.case_problem((["log", "404"], 0, "527"), 0, "526\n", "") != ""


# --- stage 3: cron parsing ---------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["*/10", "0-59/10", "0,10,20,30,40,50", "0,10-50/10"])
def test_every_ten_minutes_spellings(spelling):
    assert stage3_cron.expand_field(spelling, 0) == stage3_cron.every(10)[0]


@pytest.mark.parametrize("field,index", [("60", 0), ("*/0", 0), ("5-1", 1), ("x", 0), ("24", 1), ("", 0)])
def test_invalid_fields(field, index):
    assert stage3_cron.expand_field(field, index) is None


def test_names_and_sunday_seven():
    assert stage3_cron.expand_field("mon-fri", 4) == frozenset(range(1, 6))
    assert stage3_cron.expand_field("7", 4) == frozenset({0})
    assert stage3_cron.expand_field("jan,dec", 3) == frozenset({1, 12})


def _render(path: Path) -> str:
    defaults = yaml.safe_load((STAGE3_ROLE / "defaults" / "main.yml").read_text())
    environment = jinja2.Environment()
    environment.filters["comment"] = lambda text: f"# {text}"
    return environment.from_string(path.read_text()).render(ansible_managed="managed", **defaults)


def test_planted_cron_file_has_no_user_field():
    _, entries, problems = stage3_cron.parse_crontab(_render(STAGE3_ROLE / "templates" / "tmp-cleanup.broken.j2"),
                                                     system=True)
    assert problems == [] and [e.user for e in entries] == ["find"]


def test_repaired_and_disk_report_files_parse():
    _, fixed, _ = stage3_cron.parse_crontab(_render(STAGE3_ROLE / "templates" / "tmp-cleanup.cron.j2"), True)
    env, disk, problems = stage3_cron.parse_crontab(_render(STAGE3_ROLE / "templates" / "disk-report.cron.j2"),
                                                    True)
    assert [e.user for e in fixed] == ["root"] and problems == []
    assert disk[0].times == stage3_cron.daily_at(30, 6) and env["MAILTO"] == ""


def test_user_crontab_line_without_user_field():
    _, entries, _ = stage3_cron.parse_crontab("#Ansible: x\n*/10 * * * * /bin/job >> /var/log/j.log 2>&1\n",
                                              system=False)
    assert entries[0].times == stage3_cron.every(10) and entries[0].command.startswith("/bin/job")


@pytest.mark.parametrize("command,ok", [
    ("/bin/job >> /l 2>&1", True), ("/bin/job >>/l 2>&1", True), ("/bin/job &>> /l", True),
    ("/bin/job 2>&1 >> /l", False), ("/bin/job > /l 2>&1", False), ("/bin/job >> /l", False),
])
def test_appends_all_output(command, ok):
    assert stage3_cron.appends_all_output(command, "/l") is ok


def test_logrotate_directives_of_reference_config():
    text = _render(STAGE3_ROLE / "templates" / "logrotate.j2")
    directives = stage3_cron.logrotate_directives(text, "/var/log/notes-backup/backup.log")
    assert {"weekly", "rotate 4", "compress"} <= directives
    assert stage3_cron.logrotate_directives(text, "/var/log/other.log") is None


# --- stage 2: output parsers -------------------------------------------------------------------

CHAGE = """Last password change					: Mar 14, 2026
Password expires					: Jun 12, 2026
Minimum number of days between password change		: 0
Maximum number of days between password change		: 90
Number of days of warning before password expires	: 14
"""

GETFACL = """# file: /srv/audit/ledger.csv
# owner: root
# group: root
user::rw-
user:carol:r-x			#effective:r--
group::r--
mask::r--
other::---
"""


def test_parse_chage():
    assert stage2_users.parse_chage(CHAGE) == {"max": "90", "warn": "14"}
    assert stage2_users.parse_chage("") == {}


def test_acl_entries_use_effective_rights():
    assert stage2_users.acl_entries(GETFACL) == {"user:carol:r--"}
    assert stage2_users.acl_entries("user::rwx\ngroup::r-x\nother::---\n") == set()


def test_describe():
    assert stage2_users.describe((0o440, "root", "root")) == "0440 root:root"
    assert stage2_users.describe(None) == "missing"
