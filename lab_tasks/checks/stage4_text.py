"""Checks for stage 4: text processing with grep, sed and awk.

Every report check recomputes the right answer from the data file on the host
(the check's own parser, independent of the learner's tools) and compares it
with the learner's answer file.
"""
import re
import shlex
from collections import Counter, defaultdict
from typing import NamedTuple

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.registry import PROJECT_ROOT

# The config file as prepare installs it: app.conf.bak must equal it byte for byte.
ORIGINAL_APP_CONF = PROJECT_ROOT / "roles" / "stage4_text" / "files" / "app.conf"
WINDOW_DAY, WINDOW_HOUR = "14/Mar/2026", "14"
LOG_LINE = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<day>[^:\]]+):(?P<hour>\d\d):\d\d:\d\d [^\]]*\] '
    r'"[^"]*" (?P<status>\d{3}) (?P<size>\d+|-) ')
DEBUG_COMMENTED = re.compile(r"^\s*#\s*debug\s*=\s*true\s*$")


class Request(NamedTuple):
    """One parsed access-log line."""

    line: str
    ip: str
    day: str
    hour: str
    status: str
    size: int


def parse_log(text: str) -> list[Request]:
    """Parse nginx combined-format lines; lines that do not parse are skipped."""
    requests = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            size = 0 if match["size"] == "-" else int(match["size"])
            requests.append(Request(line, match["ip"], match["day"], match["hour"],
                                    match["status"], size))
    return requests


def errors_in_hour(requests: list[Request], day: str, hour: str) -> list[str]:
    """The 5xx lines of one hour of one day, in log order."""
    return [r.line for r in requests
            if r.day == day and r.hour == hour and r.status.startswith("5")]


def status_rows(requests: list[Request]) -> list[tuple[str, ...]]:
    """`STATUS COUNT` rows sorted by status."""
    counts = Counter(r.status for r in requests)
    return [(status, str(counts[status])) for status in sorted(counts, key=int)]


def top_client_rows(requests: list[Request], limit: int = 10) -> list[tuple[str, ...]]:
    """`COUNT IP` rows of the busiest clients, busiest first."""
    counts = Counter(r.ip for r in requests)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(str(n), ip) for ip, n in ranked[:limit]]


def bytes_per_hour_rows(requests: list[Request]) -> list[tuple[str, ...]]:
    """`HH BYTES` rows: body bytes sent per hour, sorted by hour."""
    totals: dict[str, int] = defaultdict(int)
    for r in requests:
        totals[r.hour] += r.size
    return [(hour, str(totals[hour])) for hour in sorted(totals)]


def region_revenue_rows(csv_text: str) -> list[tuple[str, ...]]:
    """`REGION TOTAL` rows (sum of units * unit_price), sorted by region."""
    totals: dict[str, int] = defaultdict(int)
    for line in csv_text.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) == 5:
            totals[fields[1]] += int(fields[3]) * int(fields[4])
    return [(region, str(totals[region])) for region in sorted(totals)]


def rows(text: str) -> list[tuple[str, ...]]:
    """Whitespace-separated fields of every non-blank line."""
    return [tuple(line.split()) for line in text.splitlines() if line.strip()]


def first_difference(expected: list, found: list) -> str:
    """Describe where two row lists part ways (empty string when equal)."""
    for index, (want, got) in enumerate(zip(expected, found), start=1):
        if want != got:
            return f"row {index} is {_show(got)}, expected {_show(want)}"
    if len(expected) != len(found):
        return f"{len(found)} rows, expected {len(expected)}"
    return ""


def config_problem(original: str, edited: str) -> str:
    """What is wrong with the edited app.conf compared with the task (empty when right)."""
    before, after = original.splitlines(), edited.splitlines()
    if len(before) != len(after):
        return f"{len(after)} lines, expected {len(before)} (comment lines out, do not delete them)"
    for number, (old, new) in enumerate(zip(before, after), start=1):
        problem = _line_problem(old, new)
        if problem:
            return f"line {number}: {problem}"
    return ""


def _line_problem(old: str, new: str) -> str:
    """Check one line of app.conf against its original."""
    if old == "listen_port = 8080":
        return "" if new == "listen_port = 9090" else f"{_show(new)}, expected 'listen_port = 9090'"
    if old == "debug = true":
        return "" if DEBUG_COMMENTED.match(new) else f"{_show(new)}, expected it commented out"
    return "" if new == old else f"{_show(new)} changed, expected {_show(old)} untouched"


def _show(value) -> str:
    """Short printable form of a row or line for evidence."""
    text = " ".join(value) if isinstance(value, tuple) else str(value)
    return repr(text if len(text) <= 90 else text[:87] + "...")


def _read(host, path: str) -> str | None:
    """File content, or None when the file is missing."""
    file = host.file(path)
    return file.content_string if file.exists and file.is_file else None


def _data(lab: Lab, name: str) -> str:
    """Path of a data file in the exercise directory."""
    return f"{lab.vars['stage4_text_dir']}/{name}"


def _requests(lab: Lab) -> list[Request]:
    """The parsed access log on the stage host (empty when missing)."""
    return parse_log(_read(lab.host(), _data(lab, "access.log")) or "")


def _answer_verdict(lab: Lab, name: str, expected: list) -> Verdict:
    """Compare an answer file's rows with the expected rows."""
    path = f"{lab.vars['stage4_text_answers_dir']}/{name}"
    content = _read(lab.host(), path)
    if content is None:
        return expect(False, expected=f"{path} with {len(expected)} rows", found="no such file")
    problem = first_difference(expected, rows(content))
    first = f", first {_show(expected[0])}" if expected else ""
    return expect(not problem, expected=f"{path} with {len(expected)} rows{first}",
                  found=problem or f"{len(expected)} matching rows")


def errors_window(lab: Lab) -> Verdict:
    """answers/5xx-14h.txt: the 5xx lines of 14:00-14:59, unchanged and in log order."""
    lines = errors_in_hour(_requests(lab), WINDOW_DAY, WINDOW_HOUR)
    return _answer_verdict(lab, "5xx-14h.txt", [tuple(line.split()) for line in lines])


def sed_config(lab: Lab) -> Verdict:
    """app.conf edited (port 9090, debug commented out); app.conf.bak is the original."""
    original = ORIGINAL_APP_CONF.read_text()
    config = _data(lab, "app.conf")
    backup, edited = _read(lab.host(), config + ".bak"), _read(lab.host(), config)
    if backup != original:
        return expect(False, expected=f"{config}.bak identical to the original app.conf",
                      found="no such file" if backup is None else "a different file")
    problem = config_problem(original, edited or "")
    return expect(not problem, expected="listen_port = 9090, debug commented out, rest unchanged",
                  found=problem or "exactly that")


def status_report(lab: Lab) -> Verdict:
    """answers/status-counts.txt: `STATUS COUNT` per status, sorted by status."""
    return _answer_verdict(lab, "status-counts.txt", status_rows(_requests(lab)))


def top_clients(lab: Lab) -> Verdict:
    """answers/top-ips.txt: `COUNT IP` for the ten busiest clients, busiest first."""
    return _answer_verdict(lab, "top-ips.txt", top_client_rows(_requests(lab)))


def bytes_per_hour(lab: Lab) -> Verdict:
    """answers/bytes-per-hour.txt: `HH BYTES` for every hour, sorted by hour."""
    return _answer_verdict(lab, "bytes-per-hour.txt", bytes_per_hour_rows(_requests(lab)))


def csv_report(lab: Lab) -> Verdict:
    """answers/region-revenue.txt: `REGION TOTAL` revenue per region, sorted by region."""
    expected = region_revenue_rows(_read(lab.host(), _data(lab, "sales.csv")) or "")
    return _answer_verdict(lab, "region-revenue.txt", expected)


def script_cases(log: str, requests: list[Request]) -> list[tuple[list[str], int, str]]:
    """(arguments, expected exit code, expected stdout, or 'usage' expected on stderr)."""
    counts = Counter(r.status for r in requests)
    return [
        ([log, "404"], 0, str(counts["404"])),
        ([log, "503"], 0, str(counts["503"])),
        ([log, "418"], 0, "0"),
        ([], 2, "usage"),
        ([log, "abc"], 2, "usage"),
        ([log + ".missing", "200"], 1, ""),
    ]


def case_problem(case: tuple[list[str], int, str], rc: int, stdout: str, stderr: str) -> str:
    """Describe how one script run differs from its case (empty when right)."""
    args, code, output = case
    if output == "usage":
        right_output = "usage" in stderr.lower()
    else:
        right_output = not output or stdout.strip() == output
    if rc == code and right_output:
        return ""
    want = "usage on stderr" if output == "usage" else repr(output)
    return (f"`count-status.sh {' '.join(args)}` gave exit {rc}, stdout {stdout.strip()[:40]!r}; "
            f"expected exit {code}" + (f" and {want}" if output else ""))


def _run_case(host, script: str, case: tuple[list[str], int, str]) -> str:
    """Run the script once (stdin closed, 10 s limit) and describe a mismatch."""
    command = " ".join(shlex.quote(part) for part in ["timeout", "10", script, *case[0]])
    result = host.run(command + " </dev/null")
    return case_problem(case, result.rc, result.stdout, result.stderr)


def count_script(lab: Lab) -> Verdict:
    """count-status.sh LOGFILE STATUS: strict mode, counts, usage and exit codes."""
    host, script = lab.host(), lab.vars["stage4_text_script_path"]
    source = _read(host, script)
    if source is None or "set -euo pipefail" not in source:
        return expect(False, expected=f"{script} with `set -euo pipefail`",
                      found="no such file" if source is None else "no strict-mode line")
    cases = script_cases(_data(lab, "access.log"), _requests(lab))
    problems = [p for p in (_run_case(host, script, case) for case in cases) if p]
    return expect(not problems, expected=f"all {len(cases)} runs right (counts, usage, exit codes)",
                  found=problems[0] if problems else f"{len(cases)} of {len(cases)} right")
