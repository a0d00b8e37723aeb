"""Checks for stage 3: scheduling with cron, systemd timers and logrotate.

Crontab lines are parsed and their time fields expanded to sets, so any
spelling of the same schedule (`*/10`, `0-59/10`, `0,10,20,30,40,50`) passes.
"""
import re
import shlex
from typing import NamedTuple

from lab_tasks.checks import Lab, Verdict, expect

FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
NAMES = {
    3: {m: i for i, m in enumerate(("jan feb mar apr may jun jul aug sep oct nov dec").split(), 1)},
    4: {d: i for i, d in enumerate(("sun mon tue wed thu fri sat").split())},
}
ENV_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
CRON_D_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class CronEntry(NamedTuple):
    """One job line: expanded time fields, the user (system crontabs only), the command."""

    times: tuple[frozenset[int], ...]
    user: str
    command: str


def expand_field(field: str, index: int) -> frozenset[int] | None:
    """Expand one cron time field to the set of values it matches; None when invalid."""
    low, high = FIELD_RANGES[index]
    values: set[int] = set()
    for part in field.lower().split(","):
        expanded = _expand_part(part, low, high, NAMES.get(index, {}))
        if expanded is None:
            return None
        values |= expanded
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _expand_part(part: str, low: int, high: int, names: dict[str, int]) -> set[int] | None:
    """Expand `*`, `N`, `A-B` with an optional `/STEP`."""
    base, _, step_text = part.partition("/")
    if base == "*":
        start, end = low, high
    else:
        first, _, last = base.partition("-")
        start, end = _value(first, names), _value(last or first, names)
        if start is None or end is None:
            return None
    step = int(step_text) if step_text.isdigit() else (None if step_text else 1)
    if not step or not low <= start <= end <= high:
        return None
    return set(range(start, end + 1, step))


def _value(text: str, names: dict[str, int]) -> int | None:
    """A number or a month/day name."""
    return int(text) if text.isdigit() else names.get(text)


def parse_crontab(text: str, system: bool) -> tuple[dict[str, str], list[CronEntry], list[str]]:
    """(environment, job entries, problems) of a crontab; system crontabs have a user field."""
    env, entries, problems = {}, [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assignment = ENV_LINE.match(stripped)
        if assignment:
            env[assignment[1]] = assignment[2].strip().strip("\"'")
            continue
        entry = parse_job(stripped, system)
        if entry is None:
            problems.append(f"line {number} is not a valid job line: {stripped[:60]!r}")
        else:
            entries.append(entry)
    return env, entries, problems


def parse_job(line: str, system: bool) -> CronEntry | None:
    """One job line -> CronEntry, or None when its time fields are invalid."""
    fields = line.split(None, 6 if system else 5)
    if len(fields) < (7 if system else 6):
        return None
    times = tuple(expand_field(field, index) for index, field in enumerate(fields[:5]))
    if any(t is None for t in times):
        return None
    return CronEntry(times, fields[5] if system else "", fields[-1])


def every(minutes: int) -> tuple[frozenset[int], ...]:
    """The expanded time fields of `*/MINUTES * * * *`."""
    return tuple(expand_field(f, i) for i, f in enumerate((f"*/{minutes}", "*", "*", "*", "*")))


def daily_at(minute: int, hour: int) -> tuple[frozenset[int], ...]:
    """The expanded time fields of `MINUTE HOUR * * *`."""
    return tuple(expand_field(f, i) for i, f in enumerate((str(minute), str(hour), "*", "*", "*")))


def appends_all_output(command: str, log: str) -> bool:
    """Does the command append stdout and stderr to `log` (`>> LOG 2>&1` or `&>> LOG`)?"""
    squashed = " ".join(command.replace(">>", " >> ").split())
    return (f">> {log} 2>&1" in squashed) or (f"&>> {log}" in squashed.replace("& >>", "&>>"))


def _run(host, *argv: str):
    """Run a read-only command, arguments quoted, in the C locale."""
    return host.run("LC_ALL=C " + " ".join(shlex.quote(arg) for arg in argv))


def _show(host, unit: str, *properties: str) -> dict[str, str]:
    """`systemctl show` properties of a unit as a dict."""
    output = _run(host, "systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _system_file(host, path: str) -> tuple[str | None, list[str]]:
    """Content of a cron.d file and what is wrong with its name, owner and mode."""
    file = host.file(path)
    if not file.exists:
        return None, [f"{path} missing"]
    problems = [] if CRON_D_NAME.match(path.rsplit("/", 1)[-1]) else ["cron ignores names with dots"]
    if (file.user, file.mode & 0o022) != ("root", 0):
        problems.append(f"{path} is {file.mode:04o} {file.user}: cron skips files not owned by root "
                        "or writable by group/others")
    return file.content_string, problems


def user_crontab(lab: Lab) -> Verdict:
    """The user's crontab runs the backup script every N minutes, appending all output to the log."""
    host, user = lab.host(), lab.vars["stage3_cron_user"]
    script, log = lab.vars["stage3_cron_backup_script"], lab.vars["stage3_cron_backup_log"]
    minutes = lab.vars["stage3_cron_backup_every_minutes"]
    listing = _run(host, "crontab", "-l", "-u", user)
    _, entries, problems = parse_crontab(listing.stdout if listing.rc == 0 else "", system=False)
    jobs = [e for e in entries if script in e.command]
    if not jobs:
        problems.append(f"no job running {script} in {user}'s crontab")
    elif jobs[0].times != every(minutes):
        problems.append(f"the job does not run exactly every {minutes} minutes")
    elif not appends_all_output(jobs[0].command, log):
        problems.append(f"output not appended to {log} (stdout and stderr)")
    if _run(host, "systemctl", "is-active", "cron").rc != 0:
        problems.append("cron is not running")
    return expect(not problems, expected=f"`*/{minutes} * * * * {script} >> {log} 2>&1` or equivalent "
                  f"in {user}'s crontab", found="; ".join(problems) or "that job")


def system_cron(lab: Lab) -> Verdict:
    """A cron.d drop-in runs the disk report as root daily at the given time, with PATH and MAILTO."""
    host, path = lab.host(), lab.vars["stage3_cron_system_file"]
    script = lab.vars["stage3_cron_disk_script"]
    minute, hour = lab.vars["stage3_cron_disk_minute"], lab.vars["stage3_cron_disk_hour"]
    content, problems = _system_file(host, path)
    env, entries, syntax = parse_crontab(content or "", system=True)
    jobs = [e for e in entries if script in e.command]
    if content is not None and not (jobs and jobs[0].times == daily_at(minute, hour)
                                    and jobs[0].user == "root"):
        problems.append(f"no job line running {script} as root at {hour:02d}:{minute:02d} daily")
    if content is not None and ("/usr/local/bin" not in env.get("PATH", "") or env.get("MAILTO") != ""):
        problems.append("PATH (with /usr/local/bin) or an empty MAILTO is not set")
    problems += syntax
    return expect(not problems, expected=f"{path}: root-owned 0644, PATH and MAILTO=\"\", "
                  f"`{minute} {hour} * * * root {script}`", found="; ".join(problems) or "that")


def broken_cron(lab: Lab) -> Verdict:
    """The planted cron.d drop-in is repaired: valid lines with a user field, a mode cron accepts."""
    host, path = lab.host(), lab.vars["stage3_cron_broken_file"]
    target = lab.vars["stage3_cron_cleanup_dir"]
    content, problems = _system_file(host, path)
    _, entries, syntax = parse_crontab(content or "", system=True)
    cleanup = [e for e in entries if target in f"{e.user} {e.command}"]
    for entry in cleanup:
        if not host.user(entry.user).exists:
            problems.append(f"user field {entry.user!r} is not a user (the line lacks its user field)")
    if content is not None and not cleanup:
        problems.append(f"the cleanup job (find {target} ...) is gone; repair it, do not delete it")
    problems += syntax
    return expect(not problems, expected=f"{path}: root-owned, not group/world-writable, "
                  "every job line with a valid user field", found="; ".join(problems) or "that")


def _service_problems(host, unit: str, script: str, user: str) -> list[str]:
    """What is wrong with the oneshot service unit."""
    props = _show(host, f"{unit}.service", "LoadState", "Type", "User", "ExecStart")
    if props.get("LoadState") != "loaded":
        return [f"{unit}.service is {props.get('LoadState', 'unknown')}"]
    problems = [] if props.get("Type") == "oneshot" else [f"Type={props.get('Type')}, not oneshot"]
    if props.get("User") != user:
        problems.append(f"User={props.get('User') or '(root)'}, not {user}")
    if f"path={script}" not in props.get("ExecStart", ""):
        problems.append(f"ExecStart does not run {script}")
    return problems


def _timer_problems(host, unit: str, calendar: str) -> list[str]:
    """What is wrong with the timer unit."""
    props = _show(host, f"{unit}.timer", "LoadState", "UnitFileState", "ActiveState",
                  "TimersCalendar", "Persistent")
    if props.get("LoadState") != "loaded":
        return [f"{unit}.timer is {props.get('LoadState', 'unknown')}"]
    problems = []
    if (props.get("UnitFileState"), props.get("ActiveState")) != ("enabled", "active"):
        problems.append(f"timer is {props.get('UnitFileState')}/{props.get('ActiveState')}, "
                        "expected enabled/active")
    if f"OnCalendar={calendar} " not in props.get("TimersCalendar", ""):
        problems.append(f"calendar is {props.get('TimersCalendar') or 'unset'}")
    if props.get("Persistent") != "yes":
        problems.append("Persistent is not yes")
    return problems


def timer_units(lab: Lab) -> Verdict:
    """A oneshot service and its enabled, active, persistent timer with the given calendar."""
    host, unit = lab.host(), lab.vars["stage3_cron_unit"]
    calendar = lab.vars["stage3_cron_timer_calendar"]
    problems = _service_problems(host, unit, lab.vars["stage3_cron_report_script"],
                                 lab.vars["stage3_cron_user"]) + _timer_problems(host, unit, calendar)
    return expect(not problems, expected=f"{unit}.service (oneshot, User={lab.vars['stage3_cron_user']}) "
                  f"and {unit}.timer enabled, active, OnCalendar={calendar}, Persistent=true",
                  found="; ".join(problems) or "both")


def timer_ran(lab: Lab) -> Verdict:
    """The service has run successfully at least once and its output is in the journal."""
    host, unit = lab.host(), lab.vars["stage3_cron_unit"]
    props = _show(host, f"{unit}.service", "ExecMainStartTimestampMonotonic", "Result",
                  "ExecMainStatus")
    started = props.get("ExecMainStartTimestampMonotonic", "0") not in ("", "0")
    journal = _run(host, "journalctl", "--no-pager", "-o", "cat", "-u", f"{unit}.service").stdout
    report_lines = [line for line in journal.splitlines() if line.startswith("notes-report:")]
    passed = started and props.get("Result") == "success" and bool(report_lines)
    found = (f"started={'yes' if started else 'never'}, result {props.get('Result', '?')}, "
             f"exit {props.get('ExecMainStatus', '?')}, journal: "
             + (repr(report_lines[-1]) if report_lines else "no report line"))
    return expect(passed, expected=f"{unit}.service ran successfully and logged `notes-report: ...`",
                  found=found)


def logrotate_directives(text: str, log: str) -> set[str] | None:
    """Directives inside the `{ }` block for `log` (None when no block names it)."""
    match = re.search(r"(^|\s)" + re.escape(log) + r"(\s[^{]*)?\{([^}]*)\}", text)
    if not match:
        return None
    return {" ".join(line.split()) for line in match.group(3).splitlines() if line.strip()}


def logrotate(lab: Lab) -> Verdict:
    """The log rotates weekly, keeps N compressed copies, and the config passes `logrotate -d`."""
    host, path = lab.host(), lab.vars["stage3_cron_logrotate_file"]
    log, keep = lab.vars["stage3_cron_backup_log"], lab.vars["stage3_cron_logrotate_keep"]
    file = host.file(path)
    directives = logrotate_directives(file.content_string, log) if file.exists else None
    debug = _run(host, "logrotate", "--debug", path) if file.exists else None
    missing = sorted({"weekly", f"rotate {keep}", "compress"} - (directives or set()))
    problems = ([f"{path} missing"] if not file.exists else
                [f"no block for {log}"] if directives is None else
                [f"missing {', '.join(missing)}"] if missing else [])
    if debug is not None and (debug.rc != 0 or "error" in debug.stderr.lower()):
        problems.append(f"`logrotate -d` says: {(debug.stderr.strip() or 'exit ' + str(debug.rc))[:120]}")
    return expect(not problems, expected=f"{path} rotating {log} weekly, rotate {keep}, compress, "
                  "clean `logrotate -d`", found="; ".join(problems) or "that")
