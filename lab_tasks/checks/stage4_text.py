"""Checks for stage 4: text processing with grep, sed and awk.

Every report check recomputes the right answer from the planted data (regenerated here with the
role's generator and seed, so truncating the data cannot make an empty answer right), makes sure the
data on the host is still that data, and compares the learner's answer file with it. Evidence says
what is wrong with the learner's file in words; it never prints the expected rows.
"""
import functools
import importlib.util
import random
import re
import shlex
from collections import Counter, defaultdict
from typing import NamedTuple

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read
from lab_tasks.registry import PROJECT_ROOT

ROLE_FILES = PROJECT_ROOT / "roles" / "stage4_text" / "files"
# The config file as prepare installs it: app.conf.bak must equal it byte for byte.
ORIGINAL_APP_CONF = ROLE_FILES / "app.conf"
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


def first_difference(expected: list, found: list, columns: str = "") -> str:
    """What is wrong with the found rows, in words, without showing an expected row (empty when equal)."""
    if found == expected:
        return ""
    if not found:
        return "the file is empty"
    if columns and found == [row[::-1] for row in expected]:
        return f"the columns are the other way round; the goal asks for `{columns}` lines"
    if sorted(found) == sorted(expected):
        return "the right rows, but not in the order the goal asks for"
    if len(found) != len(expected):
        extra = [row for row in found if row not in expected]
        return (f"{len(found)} rows; the goal asks for {len(expected)}"
                + (f" ({_show(extra[0])} is not one of them)" if extra else ""))
    for index, (want, got) in enumerate(zip(expected, found), start=1):
        if want != got:
            return f"row {index} ({_show(got)}) is wrong"
    return ""


def window_problems(expected: list[str], found: list[str], log_lines: set[str]) -> list[str]:
    """How a list of log lines misses the 5xx lines of the window, in words."""
    if found == expected:
        return []
    if not found:
        return ["the file is empty"]
    changed = [line for line in found if line not in log_lines]
    outside = [line for line in found if line in log_lines and line not in expected]
    parsed = {r.line: r for r in parse_log("\n".join(outside))}
    problems = []
    if changed:
        problems.append(f"{len(changed)} lines are not lines of access.log (they must stay unchanged)")
    if any(r.hour != WINDOW_HOUR or r.day != WINDOW_DAY for r in parsed.values()):
        problems.append("it has requests from outside 14:00-14:59")
    if any(not r.status.startswith("5") for r in parsed.values()):
        problems.append("it has requests whose status is not 5xx")
    missing = [line for line in expected if line not in found]
    if missing:
        problems.append(f"{len(missing)} of the window's {len(expected)} 5xx requests are missing")
    if not problems:
        problems.append("the right lines, but not in log order" if sorted(found) == sorted(expected)
                        else "some lines appear twice")
    return problems


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
        port = re.fullmatch(r"\s*listen_port\s*=\s*(\S+)\s*", new)
        if port and port[1] == "9090" and new.strip() == new and " = " in new:
            return ""
        return (f"listen_port is {port[1]}; the goal asks for 9090" if port
                else f"the listen_port line became {_show(new)}")
    if old == "debug = true":
        return "" if DEBUG_COMMENTED.match(new) else "the debug directive is still active; the goal asks " \
                                                       "for it commented out with #"
    return "" if new == old else f"{_show(new)} changed; the goal asks that only listen_port and debug change"


def _show(value) -> str:
    """Short printable form of a row or line for evidence."""
    text = " ".join(value) if isinstance(value, tuple) else str(value)
    return repr(text if len(text) <= 90 else text[:87] + "...")


def _data(lab: Lab, name: str) -> str:
    """Path of a data file in the exercise directory."""
    return f"{lab.vars['stage4_text_dir']}/{name}"


@functools.lru_cache(maxsize=4)
def planted(kind: str, seed: int, count: int) -> str:
    """The data prepare plants: the role's generator with the role's seed and size."""
    spec = importlib.util.spec_from_file_location("gen_text_data", ROLE_FILES / "gen_text_data.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return "\n".join(generator.GENERATORS[kind](random.Random(seed), count)) + "\n"


def _planted_log(lab: Lab) -> str:
    return planted("access-log", lab.vars["stage4_text_seed"], lab.vars["stage4_text_log_lines"])


def _planted_sales(lab: Lab) -> str:
    return planted("sales", lab.vars["stage4_text_seed"], lab.vars["stage4_text_sales_rows"])


def data_problem(lab: Lab, name: str, want: str) -> str:
    """Empty when the host's data file is the planted one; else what happened to it."""
    found = read(lab.host(), _data(lab, name))
    if found == want:
        return ""
    if found is None:
        return f"{_data(lab, name)} is gone; run `lab start stage4` to plant it again"
    return (f"{_data(lab, name)} was changed ({found.count(chr(10))} lines; the planted file has "
            f"{want.count(chr(10))}): the answers must come from the planted data; `lab start stage4` "
            "plants it again")


def _answer_verdict(lab: Lab, name: str, expected: list, data: tuple[str, str], columns: str) -> Verdict:
    """Compare an answer file's rows with the rows computed from the planted data."""
    path = f"{lab.vars['stage4_text_answers_dir']}/{name}"
    goal = f"{path} with one `{columns}` line per row of the planted data's answer"
    broken = data_problem(lab, *data)
    if broken:
        return expect(False, expected=goal, found=broken)
    content = read(lab.host(), path)
    if content is None:
        return expect(False, expected=goal, found=f"no file {path}")
    problem = first_difference(expected, rows(content), columns)
    return expect(not problem, expected=goal, found=problem or f"all {len(expected)} rows right")


def errors_window(lab: Lab) -> Verdict:
    """answers/5xx-14h.txt: the 5xx lines of 14:00-14:59, unchanged and in log order."""
    log = _planted_log(lab)
    path = f"{lab.vars['stage4_text_answers_dir']}/5xx-14h.txt"
    goal = f"{path} holding exactly the 5xx requests of 14:00-14:59, whole lines, in log order"
    broken = data_problem(lab, "access.log", log)
    content = None if broken else read(lab.host(), path)
    if broken or content is None:
        return expect(False, expected=goal, found=broken or f"no file {path}")
    expected = errors_in_hour(parse_log(log), WINDOW_DAY, WINDOW_HOUR)
    problems = window_problems(expected, [line for line in content.splitlines() if line.strip()],
                               set(log.splitlines()))
    return expect(not problems, expected=goal, found="; ".join(problems) or f"all {len(expected)} lines")


def sed_config(lab: Lab) -> Verdict:
    """app.conf edited (port 9090, debug commented out); app.conf.bak is the original."""
    original = ORIGINAL_APP_CONF.read_text()
    config = _data(lab, "app.conf")
    backup, edited = read(lab.host(), config + ".bak"), read(lab.host(), config)
    goal = "listen_port changed to 9090, debug commented out, every other line unchanged, the original kept as app.conf.bak"
    if backup != original:
        return expect(False, expected=goal, found=f"no {config}.bak" if backup is None else
                      f"{config}.bak is not the original app.conf (was it written after the edit?)")
    problem = config_problem(original, edited or "")
    return expect(not problem, expected=goal, found=problem or "exactly that")


def status_report(lab: Lab) -> Verdict:
    """answers/status-counts.txt: `STATUS COUNT` per status, sorted by status."""
    return _answer_verdict(lab, "status-counts.txt", status_rows(parse_log(_planted_log(lab))),
                           ("access.log", _planted_log(lab)), "STATUS COUNT")


def top_clients(lab: Lab) -> Verdict:
    """answers/top-ips.txt: `COUNT IP` for the ten busiest clients, busiest first."""
    return _answer_verdict(lab, "top-ips.txt", top_client_rows(parse_log(_planted_log(lab))),
                           ("access.log", _planted_log(lab)), "COUNT IP")


def bytes_per_hour(lab: Lab) -> Verdict:
    """answers/bytes-per-hour.txt: `HH BYTES` for every hour, sorted by hour."""
    return _answer_verdict(lab, "bytes-per-hour.txt", bytes_per_hour_rows(parse_log(_planted_log(lab))),
                           ("access.log", _planted_log(lab)), "HH BYTES")


def csv_report(lab: Lab) -> Verdict:
    """answers/region-revenue.txt: `REGION TOTAL` revenue per region, sorted by region."""
    return _answer_verdict(lab, "region-revenue.txt", region_revenue_rows(_planted_sales(lab)),
                           ("sales.csv", _planted_sales(lab)), "REGION TOTAL")


SCRIPT_CASE_KINDS = ("a status with requests", "another status with requests", "a status without requests",
                     "no arguments", "a status that is not three digits", "an unreadable log")


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
    # the expected count is not printed: it is a row of the status report, another task's answer
    want = ("a usage message on stderr" if output == "usage" else
            "printing 0" if output == "0" else "printing how many requests got that status")
    return (f"`count-status.sh {' '.join(args)}` exited {rc} and printed {stdout.strip()[:40]!r}; "
            f"the goal asks for exit {code}" + (f", {want}" if output else ""))


def _run_case(host, script: str, case: tuple[list[str], int, str]) -> str:
    """Run the script once (stdin closed, 10 s limit) and describe a mismatch."""
    command = " ".join(shlex.quote(part) for part in ["timeout", "10", script, *case[0]])
    result = host.run(command + " </dev/null")
    return case_problem(case, result.rc, result.stdout, result.stderr)


def count_script(lab: Lab) -> Verdict:
    """count-status.sh LOGFILE STATUS: strict mode, counts, usage and exit codes."""
    host, script = lab.host(), lab.vars["stage4_text_script_path"]
    goal = f"{script} in strict mode, right on all {len(SCRIPT_CASE_KINDS)} test runs (counts, usage, exit codes)"
    source = read(host, script)
    if source is None or not re.search(r"^\s*set -euo pipefail\b", source, re.M):
        return expect(False, expected=goal, found=f"no {script}" if source is None else
                      "the script does not switch on strict mode (set -euo pipefail) before it works")
    broken = data_problem(lab, "access.log", _planted_log(lab))
    if broken:
        return expect(False, expected=goal, found=broken)
    cases = script_cases(_data(lab, "access.log"), parse_log(_planted_log(lab)))
    problems = [p for p in (_run_case(host, script, case) for case in cases) if p]
    return expect(not problems, expected=goal,
                  found=problems[0] if problems else f"{len(cases)} of {len(cases)} right")
