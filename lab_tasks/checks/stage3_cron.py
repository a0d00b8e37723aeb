"""Checks for stage 3: scheduling with cron, systemd timers and logrotate.

Crontab lines are parsed and their time fields expanded to sets, so any
spelling of the same schedule (`*/10`, `0-59/10`, `0,10,20,30,40,50`) passes.
"""
import re
from typing import NamedTuple

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read, run

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
            problems.append(f"line {number} is not a valid job line (five time fields, "
                            f"{'a user, ' if system else ''}a command)")
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
    return output_problem(command, log) == ""


def output_problem(command: str, log: str) -> str:
    """How the command's output handling misses "append stdout and stderr to `log`" (empty when right)."""
    squashed = " ".join(command.replace(">>", " >> ").replace("&> >", "&>>").split())
    if f">> {log} 2>&1" in squashed or f"&>> {log}" in squashed.replace("& >>", "&>>"):
        return ""
    if log not in squashed:
        return "its output does not go to the backup log"
    if f">> {log}" not in squashed:
        return "it overwrites the log on every run instead of appending"
    if "2>&1" in squashed.split(f">> {log}")[0]:
        return "stderr is redirected before stdout goes to the log, so errors still go to cron's mail"
    return "only stdout is appended; errors go to cron's mail"


def describe_times(times: tuple[frozenset[int], ...]) -> str:
    """A schedule in words: `every 5 minutes`, `daily at 06:30`, or the minutes and hours it runs."""
    minutes, hours = sorted(times[0]), sorted(times[1])
    rest_full = all(times[i] == frozenset(range(lo, hi + 1)) or (i == 4 and times[i] == frozenset(range(7)))
                    for i, (lo, hi) in enumerate(FIELD_RANGES) if i >= 2)
    if rest_full and len(hours) == 24 and len(minutes) > 1:
        step = minutes[1] - minutes[0]
        if minutes == list(range(minutes[0], 60, step)) and 60 % step == 0:
            return f"every {step} minutes"
    if rest_full and len(hours) == 24 and len(minutes) == 1:
        return f"every hour at minute {minutes[0]}"
    if rest_full and len(hours) == 1 and len(minutes) == 1:
        return f"daily at {hours[0]:02d}:{minutes[0]:02d}"
    if not rest_full:
        return "only on some days or months"
    return f"at minutes {','.join(map(str, minutes))} of hours {','.join(map(str, hours))}"


def _show(host, unit: str, *properties: str) -> dict[str, str]:
    """`systemctl show` properties of a unit as a dict."""
    output = run(host, "systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _system_file(host, path: str) -> tuple[str | None, list[str]]:
    """Content of a cron.d file and what is wrong with its name, owner and mode."""
    file = host.file(path)
    if not file.exists:
        return None, [f"there is no {path}"]
    problems = [] if CRON_D_NAME.match(path.rsplit("/", 1)[-1]) else ["cron ignores names with dots"]
    if file.user != "root":
        problems.append(f"{path} belongs to {file.user}; cron only reads files owned by root")
    if file.mode & 0o022:
        problems.append(f"{path} is writable by {'group' if file.mode & 0o020 else 'others'}; "
                        "cron ignores such files")
    return file.content_string, problems


def _jobs(host, user: str, script: str) -> list[CronEntry] | None:
    """The jobs of `user`'s crontab that run `script` (None when the user has no crontab)."""
    listing = run(host, "crontab", "-l", "-u", user)
    if listing.rc != 0:
        return None
    return [e for e in parse_crontab(listing.stdout, system=False)[1] if script in e.command]


def user_crontab(lab: Lab) -> Verdict:
    """The user's crontab runs the backup script every N minutes, appending all output to the log."""
    host, user = lab.host(), lab.vars["stage3_cron_user"]
    script, log = lab.vars["stage3_cron_backup_script"], lab.vars["stage3_cron_backup_log"]
    minutes = lab.vars["stage3_cron_backup_every_minutes"]
    jobs, problems = _jobs(host, user, script) or [], []
    if not jobs:
        elsewhere = _jobs(host, "root", script)
        problems.append(f"{user}'s crontab has no job running {script}"
                        + ("; it is in root's crontab, the goal asks for the job in "
                           f"{user}'s" if elsewhere else ""))
    elif jobs[0].times != every(minutes):
        problems.append(f"the job runs {describe_times(jobs[0].times)}; the goal asks for every {minutes} minutes")
    elif output_problem(jobs[0].command, log):
        problems.append(output_problem(jobs[0].command, log))
    if run(host, "systemctl", "is-active", "cron").rc != 0:
        problems.append("cron is not running, so no job runs")
    return expect(not problems, expected=f"{user}'s crontab running {script} every {minutes} minutes, "
                  f"appending its output and its errors to {log}", found="; ".join(problems) or "that job")


def system_cron(lab: Lab) -> Verdict:
    """A cron.d drop-in runs the disk report as root daily at the given time, with PATH and MAILTO."""
    host, path = lab.host(), lab.vars["stage3_cron_system_file"]
    script = lab.vars["stage3_cron_disk_script"]
    minute, hour = lab.vars["stage3_cron_disk_minute"], lab.vars["stage3_cron_disk_hour"]
    content, problems = _system_file(host, path)
    env, entries, syntax = parse_crontab(content or "", system=True)
    jobs = [e for e in entries if script in e.command or e.user == script]
    if content is not None:
        if not jobs:
            problems.append(f"no valid job line runs {script}")
        elif jobs[0].user == script or not host.user(jobs[0].user).exists:
            problems.append("the job line has no user field between the time fields and the command")
        elif jobs[0].user != "root":
            problems.append(f"the job runs as {jobs[0].user}; the goal asks for root")
        elif jobs[0].times != daily_at(minute, hour):
            problems.append(f"the job runs {describe_times(jobs[0].times)}; the goal asks for daily at "
                            f"{hour:02d}:{minute:02d}")
        path_dirs = env.get("PATH", "").split(":")
        missing = [d for d in ("/usr/local/bin", "/usr/sbin") if d not in path_dirs]
        if missing:
            problems.append(f"PATH lacks {' and '.join(missing)}" if "PATH" in env else "PATH is not set")
        if env.get("MAILTO") != "":
            problems.append("MAILTO is not set empty, so cron mails the job's output"
                            if "MAILTO" in env else "MAILTO is not set, so cron mails the job's output")
    problems += syntax
    return expect(not problems, expected=f"{path} owned by root, not writable by others, with PATH "
                  f"including /usr/local/bin and /usr/sbin, MAILTO empty, and {script} run as root daily "
                  f"at {hour:02d}:{minute:02d}", found="; ".join(problems) or "that")


def broken_cron(lab: Lab) -> Verdict:
    """The planted cron.d drop-in is repaired: valid lines with a user field, a mode cron accepts."""
    host, path = lab.host(), lab.vars["stage3_cron_broken_file"]
    target = lab.vars["stage3_cron_cleanup_dir"]
    content, problems = _system_file(host, path)
    _, entries, syntax = parse_crontab(content or "", system=True)
    cleanup = [e for e in entries if target in f"{e.user} {e.command}"]
    for entry in cleanup:
        if not host.user(entry.user).exists:
            problems.append(f"the job line has {entry.user!r} where the user field belongs, and no such "
                            "user exists")
    if content is not None and not cleanup:
        problems.append(f"the cleanup job (the one emptying {target}) is gone; repair it, do not delete it")
    problems += syntax
    return expect(not problems, expected=f"{path} owned by root, not writable by group or others, "
                  "with the cleanup job kept and a valid user field", found="; ".join(problems) or "that")


def _service_problems(host, unit: str, script: str, user: str) -> list[str]:
    """What is wrong with the oneshot service unit."""
    props = _show(host, f"{unit}.service", "LoadState", "Type", "User", "ExecStart")
    if props.get("LoadState") != "loaded":
        return [f"there is no {unit}.service unit ({props.get('LoadState', 'unknown')})"]
    problems = [] if props.get("Type") == "oneshot" else [
        f"the service is of type {props.get('Type')}; the goal asks for a oneshot"]
    if props.get("User") != user:
        problems.append(f"the service runs as {props.get('User') or 'root'}; the goal asks for {user}")
    if f"path={script}" not in props.get("ExecStart", ""):
        problems.append(f"the service does not run {script}")
    return problems


def _timer_problems(host, unit: str, calendar: str) -> list[str]:
    """What is wrong with the timer unit."""
    props = _show(host, f"{unit}.timer", "LoadState", "UnitFileState", "ActiveState",
                  "TimersCalendar", "Persistent")
    if props.get("LoadState") != "loaded":
        return [f"there is no {unit}.timer unit ({props.get('LoadState', 'unknown')})"]
    problems = []
    if props.get("UnitFileState") != "enabled":
        problems.append(f"the timer is {props.get('UnitFileState') or 'not enabled'}, so it does not "
                        "start at boot")
    if props.get("ActiveState") != "active":
        problems.append(f"the timer is {props.get('ActiveState') or 'not started'} now")
    if f"OnCalendar={calendar} " not in props.get("TimersCalendar", ""):
        when = re.search(r"OnCalendar=(\S+ \S+)", props.get("TimersCalendar", ""))
        problems.append("the timer fires " + (f"on `{when[1]}`" if when else "on no calendar")
                        + "; the goal asks for every day at 02:30")
    if props.get("Persistent") != "yes":
        problems.append("the timer does not catch up on runs missed while the host was off")
    return problems


def timer_units(lab: Lab) -> Verdict:
    """A oneshot service and its enabled, active, persistent timer with the given calendar."""
    host, unit = lab.host(), lab.vars["stage3_cron_unit"]
    calendar = lab.vars["stage3_cron_timer_calendar"]
    problems = _service_problems(host, unit, lab.vars["stage3_cron_report_script"],
                                 lab.vars["stage3_cron_user"]) + _timer_problems(host, unit, calendar)
    return expect(not problems, expected=f"{unit}.service (a oneshot running the report as "
                  f"{lab.vars['stage3_cron_user']}) and {unit}.timer, enabled and started, firing daily at "
                  "02:30 and catching up on missed runs", found="; ".join(problems) or "both")


def timer_ran(lab: Lab) -> Verdict:
    """The service has run successfully at least once and its output is in the journal."""
    host, unit = lab.host(), lab.vars["stage3_cron_unit"]
    props = _show(host, f"{unit}.service", "ExecMainStartTimestampMonotonic", "Result",
                  "ExecMainStatus")
    started = props.get("ExecMainStartTimestampMonotonic", "0") not in ("", "0")
    journal = run(host, "journalctl", "--no-pager", "-o", "cat", "-u", f"{unit}.service").stdout
    report_lines = [line for line in journal.splitlines() if line.startswith("notes-report:")]
    if not started:
        found = f"{unit}.service never ran (running the script by hand does not count)"
    elif props.get("Result") != "success":
        found = f"its last run failed ({props.get('Result')}, exit status {props.get('ExecMainStatus', '?')})"
    elif not report_lines:
        found = "it ran, but its journal has no `notes-report:` line"
    else:
        found = "a successful run with its report line in the journal"
    return expect(started and props.get("Result") == "success" and bool(report_lines),
                  expected=f"{unit}.service started once, successfully, its `notes-report:` line in the "
                  "journal", found=found)


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
    text = read(host, path)
    directives = logrotate_directives(text, log) if text is not None else None
    problems = ([f"there is no {path}"] if text is None else
                [f"{path} has no block for {log}"] if directives is None else
                _rotation_problems(directives, keep))
    if text is not None:
        debug = run(host, "logrotate", "--debug", path)
        if debug.rc != 0 or "error" in debug.stderr.lower():
            said = " ".join((debug.stderr.strip() or f"exit {debug.rc}").split())[:120]
            problems.append(f"logrotate's dry run reports an error: {said}")
    return expect(not problems, expected=f"{path} rotating {log} weekly, keeping {keep} compressed old "
                  "copies, and a clean dry run", found="; ".join(problems) or "that")


def _rotation_problems(directives: set[str], keep: int) -> list[str]:
    """How the block's directives miss weekly / keep N / compressed, in words."""
    problems = []
    period = next((d for d in directives if d in ("hourly", "daily", "weekly", "monthly", "yearly")), None)
    if period != "weekly":
        problems.append(f"it rotates {period or 'on the default schedule'}; the goal asks for weekly")
    counts = [d.split()[1] for d in directives if d.startswith("rotate ") and len(d.split()) == 2]
    if counts != [str(keep)]:
        problems.append(f"it keeps {counts[0] if counts else 'no'} old copies; the goal asks for {keep}")
    if "compress" not in directives:
        problems.append("old copies are not compressed")
    return problems
