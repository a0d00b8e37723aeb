"""Recorded host states of stage 4 (grep, sed, awk): solved, and the near misses learners reach."""
from __future__ import annotations

import yaml

from hoststates import FakeFile, FakeHost, NearMiss, Result, fake_lab
from lab_tasks.checks import stage4_text as checks
from lab_tasks.registry import PROJECT_ROOT

STAGE = "stage4"
V = yaml.safe_load((PROJECT_ROOT / "roles" / "stage4_text" / "defaults" / "main.yml").read_text())
DIR, ANSWERS, SCRIPT = V["stage4_text_dir"], V["stage4_text_answers_dir"], V["stage4_text_script_path"]
LOG = checks.planted("access-log", V["stage4_text_seed"], V["stage4_text_log_lines"])
SALES = checks.planted("sales", V["stage4_text_seed"], V["stage4_text_sales_rows"])
REQUESTS = checks.parse_log(LOG)
ORIGINAL_CONF = checks.ORIGINAL_APP_CONF.read_text()
WINDOW = checks.errors_in_hour(REQUESTS, checks.WINDOW_DAY, checks.WINDOW_HOUR)


def _lines(rows) -> str:
    return "".join(" ".join(row) + "\n" for row in rows)


def _edit(text: str, old: str, new: str) -> str:
    return "\n".join(new if line == old else line for line in text.split("\n"))


EDITED_CONF = _edit(_edit(ORIGINAL_CONF, "listen_port = 8080", "listen_port = 9090"), "debug = true", "# debug = true")
SOLVED_FILES = {
    f"{DIR}/access.log": LOG,
    f"{DIR}/sales.csv": SALES,
    f"{DIR}/app.conf": EDITED_CONF,
    f"{DIR}/app.conf.bak": ORIGINAL_CONF,
    f"{ANSWERS}/5xx-14h.txt": "".join(line + "\n" for line in WINDOW),
    f"{ANSWERS}/status-counts.txt": _lines(checks.status_rows(REQUESTS)),
    f"{ANSWERS}/top-ips.txt": _lines(checks.top_client_rows(REQUESTS)),
    f"{ANSWERS}/bytes-per-hour.txt": _lines(checks.bytes_per_hour_rows(REQUESTS)),
    f"{ANSWERS}/region-revenue.txt": _lines(checks.region_revenue_rows(SALES)),
    SCRIPT: FakeFile((PROJECT_ROOT / "roles" / "stage4_text" / "files" / "count-status.sh").read_text(), mode=0o755),
}


def _case_line(args: list[str]) -> str:
    return " ".join(["timeout", "10", SCRIPT, *args]) + " </dev/null"


def script_runs(answer=None) -> dict[str, Result]:
    """What the reference script does on the check's cases; `answer(case)` may replace a Result."""
    runs = {}
    for case in checks.script_cases(f"{DIR}/access.log", REQUESTS):
        args, code, output = case
        result = Result(code, "" if output in ("usage", "") else output + "\n",
                        "usage: count-status.sh LOGFILE STATUS\n" if output == "usage" else
                        ("count-status.sh: cannot read it\n" if code == 1 else ""))
        runs[_case_line(args)] = (answer(case) if answer else None) or result
    return runs


def host(files: dict | None = None, commands: dict | None = None) -> FakeHost:
    merged = SOLVED_FILES | (files or {})
    return FakeHost(files={p: f for p, f in merged.items() if f is not None},
                    commands=script_runs() | (commands or {}))


def solved(tmp_path=None):
    return fake_lab(STAGE, {"learner1": host()})


def _with(files=None, commands=None):
    return lambda tmp_path: fake_lab(STAGE, {"learner1": host(files, commands)})


def _answer(name: str, text: str) -> dict:
    return {f"{ANSWERS}/{name}": text}


TRUNCATED = {f"{DIR}/access.log": LOG.splitlines(keepends=True)[0]}
STATUS_ROWS = checks.status_rows(REQUESTS)
TOP = checks.top_client_rows(REQUESTS)
HOURS = checks.bytes_per_hour_rows(REQUESTS)
REGIONS = checks.region_revenue_rows(SALES)
ALL_5XX = [r.line for r in REQUESTS if r.status.startswith("5")]
HOUR_14 = [r.line for r in REQUESTS if r.hour == "14"]
# `grep ':14:'` also matches requests whose minute or second is 14
LOOSE_14 = [r.line for r in REQUESTS if ":14:" in r.line and r.status.startswith("5")]

NEAR_MISSES = [
    NearMiss("grep-window", "every 5xx of the day", _with(_answer("5xx-14h.txt", "\n".join(ALL_5XX) + "\n")),
             "requests from outside 14:00-14:59"),
    NearMiss("grep-window", "every request of the hour", _with(_answer("5xx-14h.txt", "\n".join(HOUR_14) + "\n")),
             "status is not 5xx"),
    NearMiss("grep-window", ":14: anywhere in the line", _with(_answer("5xx-14h.txt", "\n".join(LOOSE_14) + "\n")),
             "outside 14:00-14:59"),
    NearMiss("grep-window", "only the status column kept",
             _with(_answer("5xx-14h.txt", "".join(line.split('"')[2].split()[0] + "\n" for line in WINDOW))),
             "are not lines of access.log"),
    NearMiss("grep-window", "half the lines", _with(_answer("5xx-14h.txt", "\n".join(WINDOW[::2]) + "\n")),
             f"{len(WINDOW[1::2])} of the window's {len(WINDOW)} 5xx requests are missing"),
    NearMiss("grep-window", "log truncated, answer empty", _with(TRUNCATED | _answer("5xx-14h.txt", "")),
             "access.log was changed"),
    NearMiss("sed-config", "every 8080 replaced",
             _with({f"{DIR}/app.conf": _edit(ORIGINAL_CONF.replace("8080", "9090"), "debug = true", "# debug = true")}),
             "the goal asks that only listen_port and debug change"),
    NearMiss("sed-config", "port left alone", _with({f"{DIR}/app.conf": _edit(ORIGINAL_CONF, "debug = true", "#debug = true")}),
             "listen_port is 8080; the goal asks for 9090"),
    NearMiss("sed-config", "debug line deleted",
             _with({f"{DIR}/app.conf": "\n".join(line for line in EDITED_CONF.split("\n") if line != "# debug = true")}),
             "comment lines out, do not delete them"),
    NearMiss("sed-config", "debug left on", _with({f"{DIR}/app.conf": _edit(ORIGINAL_CONF, "listen_port = 8080",
                                                                               "listen_port = 9090")}),
             "the debug directive is still active"),
    NearMiss("sed-config", "no backup", _with({f"{DIR}/app.conf.bak": None}), "no /srv/text/app.conf.bak"),
    NearMiss("sed-config", "backup taken after the edit", _with({f"{DIR}/app.conf.bak": EDITED_CONF}),
             "is not the original app.conf"),
    NearMiss("status-report", "log truncated, answer empty", _with(TRUNCATED | _answer("status-counts.txt", "")),
             ("access.log was changed", "1 lines; the planted file has 6000")),
    NearMiss("status-report", "uniq -c order (COUNT STATUS)",
             _with(_answer("status-counts.txt", _lines(row[::-1] for row in STATUS_ROWS))), "the other way round"),
    NearMiss("status-report", "sorted by count",
             _with(_answer("status-counts.txt", _lines(sorted(STATUS_ROWS, key=lambda r: int(r[1]))))),
             "not in the order the goal asks for"),
    NearMiss("status-report", "counted field 8",
             _with(_answer("status-counts.txt", "HTTP/1.1\" 6000\n")), "1 rows; the goal asks for"),
    NearMiss("top-clients", "only five", _with(_answer("top-ips.txt", _lines(TOP[:5]))), "5 rows; the goal asks for 10"),
    NearMiss("top-clients", "IP COUNT", _with(_answer("top-ips.txt", _lines(row[::-1] for row in TOP))),
             "the other way round; the goal asks for `COUNT IP`"),
    NearMiss("top-clients", "least busy first", _with(_answer("top-ips.txt", _lines(TOP[::-1]))), "not in the order"),
    NearMiss("top-clients", "empty answer", _with(_answer("top-ips.txt", "")), "the file is empty"),
    NearMiss("bytes-per-hour", "hours without leading zero",
             _with(_answer("bytes-per-hour.txt", _lines((str(int(h)), b) for h, b in HOURS))), "row 1 ('0 "),
    NearMiss("bytes-per-hour", "only the hours with traffic after noon",
             _with(_answer("bytes-per-hour.txt", _lines(HOURS[12:]))), "12 rows; the goal asks for 24"),
    NearMiss("bytes-per-hour", "summed the status field",
             _with(_answer("bytes-per-hour.txt", _lines((h, str(int(b) // 1000)) for h, b in HOURS))), "is wrong"),
    NearMiss("csv-report", "header counted as a region",
             _with(_answer("region-revenue.txt", _lines(REGIONS + [("region", "0")]))),
             "('region 0' is not one of them)"),
    NearMiss("csv-report", "units only", _with(_answer("region-revenue.txt", "central 1\neast 2\nnorth 3\nsouth 4\nwest 5\n")),
             "row 1 ('central 1') is wrong"),
    NearMiss("csv-report", "sales truncated, answer empty",
             _with({f"{DIR}/sales.csv": "date,region,product,units,unit_price\n"} | _answer("region-revenue.txt", "")),
             "sales.csv was changed"),
    NearMiss("count-script", "no strict mode",
             _with({SCRIPT: FakeFile(SOLVED_FILES[SCRIPT].content.replace("set -euo pipefail", "set -u"), mode=0o755)}),
             "does not switch on strict mode"),
    NearMiss("count-script", "grep -c under set -e",
             _with(commands=script_runs(lambda case: Result(1, "0\n") if case[0][1:] == ["418"] else None)),
             "exited 1 and printed '0'; the goal asks for exit 0"),
    NearMiss("count-script", "usage on stdout",
             _with(commands=script_runs(lambda case: Result(2, "usage: count-status.sh LOGFILE STATUS\n")
                                        if case[2] == "usage" else None)),
             "a usage message on stderr"),
    NearMiss("count-script", "a hard-coded count",
             _with(commands=script_runs(lambda case: Result(0, "527\n") if case[1] == 0 else None)),
             "the goal asks for exit 0, printing how many requests got that status"),
    NearMiss("count-script", "log truncated so every count is 0", _with(TRUNCATED), "access.log was changed"),
]
