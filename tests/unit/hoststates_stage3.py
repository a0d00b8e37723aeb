"""Recorded host states of stage 3 (cron, timers, logrotate): solved, and the near misses learners reach."""
from __future__ import annotations

import jinja2
import yaml

from hoststates import FakeFile, FakeHost, FakeUser, NearMiss, Result, fake_lab
from lab_tasks.registry import PROJECT_ROOT

STAGE = "stage3"
ROLE = PROJECT_ROOT / "roles" / "stage3_cron"
V = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
USER, SCRIPT, LOG = V["stage3_cron_user"], V["stage3_cron_backup_script"], V["stage3_cron_backup_log"]
CRONTAB = f"crontab -l -u {USER}"
SERVICE_SHOW = ("systemctl show notes-report.service --property=LoadState --property=Type --property=User "
                "--property=ExecStart")
TIMER_SHOW = ("systemctl show notes-report.timer --property=LoadState --property=UnitFileState "
              "--property=ActiveState --property=TimersCalendar --property=Persistent")
RAN_SHOW = ("systemctl show notes-report.service --property=ExecMainStartTimestampMonotonic --property=Result "
            "--property=ExecMainStatus")
JOURNAL = "journalctl --no-pager -o cat -u notes-report.service"
LOGROTATE_DRY_RUN = f"logrotate --debug {V['stage3_cron_logrotate_file']}"


def render(template: str) -> str:
    """A role template as the solve renders it."""
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters["comment"] = lambda text: f"# {text}"
    source = (ROLE / "templates" / template).read_text()
    return environment.from_string(source).render(ansible_managed="Ansible managed", **V)


def _props(**values) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


SOLVED_COMMANDS = {
    CRONTAB: f"#Ansible: notes backup\n*/10 * * * * {SCRIPT} >> {LOG} 2>&1\n",
    "crontab -l -u root": Result(1, "", "no crontab for root\n"),
    "systemctl is-active cron": "active\n",
    SERVICE_SHOW: _props(Type="oneshot", User=USER, LoadState="loaded",
                         ExecStart=f"{{ path={V['stage3_cron_report_script']} ; argv[]="
                                   f"{V['stage3_cron_report_script']} ; ignore_errors=no }}"),
    TIMER_SHOW: _props(LoadState="loaded", UnitFileState="enabled", ActiveState="active", Persistent="yes",
                       TimersCalendar="{ OnCalendar=*-*-* 02:30:00 ; next_elapse=Thu 2026-12-03 02:30:00 UTC }"),
    RAN_SHOW: _props(ExecMainStartTimestampMonotonic="81234567", Result="success", ExecMainStatus="0"),
    JOURNAL: "Starting notes-report.service...\nnotes-report: 12 notes, 3 changed today\n"
             "notes-report.service: Deactivated successfully.\n",
    LOGROTATE_DRY_RUN: Result(0, "", "reading config file /etc/logrotate.d/notes-backup\n"),
}


def solved_files() -> dict[str, FakeFile]:
    return {V["stage3_cron_system_file"]: FakeFile(render("disk-report.cron.j2")),
            V["stage3_cron_broken_file"]: FakeFile(render("tmp-cleanup.cron.j2")),
            V["stage3_cron_logrotate_file"]: FakeFile(render("logrotate.j2"))}


def host(files: dict | None = None, commands: dict | None = None) -> FakeHost:
    """The solved learner host, with some files or command outputs replaced (None removes a file)."""
    merged = solved_files() | {p: f if f is not None else FakeFile(kind="missing") for p, f in (files or {}).items()}
    return FakeHost(files={p: FakeFile(f) if isinstance(f, str) else f for p, f in merged.items()},
                    commands=SOLVED_COMMANDS | (commands or {}),
                    users=[FakeUser("root", 0, home="/root"), FakeUser(USER, V["stage3_cron_user_uid"])])


def solved(tmp_path=None):
    return fake_lab(STAGE, {"learner1": host()})


def _with(files=None, commands=None):
    return lambda tmp_path: fake_lab(STAGE, {"learner1": host(files, commands)})


def _crontab(line: str) -> dict:
    return {CRONTAB: f"{line}\n"}


def _system(text: str, **attrs) -> dict:
    return {V["stage3_cron_system_file"]: FakeFile(text, **attrs)}


def _disk(job: str, env: str = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nMAILTO=""\n'):
    return _system(f"{env}{job}\n")


DISK = V["stage3_cron_disk_script"]
BROKEN = V["stage3_cron_broken_file"]
CLEANUP = f"*/15 * * * * find {V['stage3_cron_cleanup_dir']} -type f -mtime +7 -delete"
ROTATE = V["stage3_cron_logrotate_file"]

NEAR_MISSES = [
    NearMiss("user-crontab", "every 5 minutes", _with(commands=_crontab(f"*/5 * * * * {SCRIPT} >> {LOG} 2>&1")),
             "runs every 5 minutes; the goal asks for every 10 minutes"),
    NearMiss("user-crontab", "hourly at minute 10", _with(commands=_crontab(f"10 * * * * {SCRIPT} >> {LOG} 2>&1")),
             "runs every hour at minute 10"),
    NearMiss("user-crontab", "overwrites the log", _with(commands=_crontab(f"*/10 * * * * {SCRIPT} > {LOG} 2>&1")),
             "overwrites the log"),
    NearMiss("user-crontab", "stderr redirected first",
             _with(commands=_crontab(f"*/10 * * * * {SCRIPT} 2>&1 >> {LOG}")), "errors still go to cron's mail"),
    NearMiss("user-crontab", "only stdout appended", _with(commands=_crontab(f"*/10 * * * * {SCRIPT} >> {LOG}")),
             "only stdout is appended"),
    NearMiss("user-crontab", "in root's crontab instead of ops's",
             _with(commands={CRONTAB: Result(1, "", f"no crontab for {USER}\n"),
                             "crontab -l -u root": f"*/10 * * * * {SCRIPT} >> {LOG} 2>&1\n"}),
             ("it is in root's crontab", f"{USER}'s")),
    NearMiss("user-crontab", "cron stopped", _with(commands={"systemctl is-active cron": Result(3, "inactive\n")}),
             "cron is not running"),
    NearMiss("system-cron", "no user field", _with(files=_disk(f"30 6 * * * {DISK} >> /var/log/disk-report.log 2>&1")),
             "no user field"),
    NearMiss("system-cron", "runs as ops", _with(files=_disk(f"30 6 * * * {USER} {DISK}")),
             "runs as ops; the goal asks for root"),
    NearMiss("system-cron", "at 06:00", _with(files=_disk(f"0 6 * * * root {DISK}")),
             "runs daily at 06:00; the goal asks for daily at 06:30"),
    NearMiss("system-cron", "hour and minute swapped", _with(files=_disk(f"6 30 * * * root {DISK}")),
             "not a valid job line"),
    NearMiss("system-cron", "MAILTO left out",
             _with(files=_disk(f"30 6 * * * root {DISK}", env="PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin\n")),
             "MAILTO is not set"),
    NearMiss("system-cron", "PATH without /usr/sbin",
             _with(files=_disk(f"30 6 * * * root {DISK}", env='PATH=/usr/local/bin:/usr/bin:/bin\nMAILTO=""\n')),
             "PATH lacks /usr/sbin"),
    NearMiss("system-cron", "group-writable drop-in",
             _with(files=_system(render("disk-report.cron.j2"), mode=0o664)), "writable by group"),
    NearMiss("system-cron", "owned by ops", _with(files=_system(render("disk-report.cron.j2"), user=USER)),
             "belongs to ops"),
    NearMiss("system-cron", "dotted name", _with(files={V["stage3_cron_system_file"]: None,
                                                         "/etc/cron.d/disk-report.cron": render("disk-report.cron.j2")}),
             "there is no /etc/cron.d/disk-report"),
    NearMiss("broken-cron", "untouched", _with(files={BROKEN: FakeFile(render("tmp-cleanup.broken.j2"), mode=0o664)}),
             ("'find' where the user field belongs", "writable by group")),
    NearMiss("broken-cron", "mode fixed, user field still missing",
             _with(files={BROKEN: render("tmp-cleanup.broken.j2")}), "where the user field belongs"),
    NearMiss("broken-cron", "user field added, still group-writable",
             _with(files={BROKEN: FakeFile(render("tmp-cleanup.cron.j2"), mode=0o664)}), "writable by group"),
    NearMiss("broken-cron", "job deleted", _with(files={BROKEN: "SHELL=/bin/sh\n"}), "the cleanup job"),
    NearMiss("timer-units", "not persistent",
             _with(commands={TIMER_SHOW: SOLVED_COMMANDS[TIMER_SHOW].replace("Persistent=yes", "Persistent=no")}),
             "does not catch up on runs missed"),
    NearMiss("timer-units", "started but not enabled",
             _with(commands={TIMER_SHOW: SOLVED_COMMANDS[TIMER_SHOW].replace("=enabled", "=disabled")}),
             "the timer is disabled, so it does not start at boot"),
    NearMiss("timer-units", "enabled but never started",
             _with(commands={TIMER_SHOW: SOLVED_COMMANDS[TIMER_SHOW].replace("=active", "=inactive")}),
             "the timer is inactive now"),
    NearMiss("timer-units", "fires at 14:30",
             _with(commands={TIMER_SHOW: SOLVED_COMMANDS[TIMER_SHOW].replace("02:30:00 ;", "14:30:00 ;")}),
             "the goal asks for every day at 02:30"),
    NearMiss("timer-units", "service runs as root",
             _with(commands={SERVICE_SHOW: SOLVED_COMMANDS[SERVICE_SHOW].replace(f"User={USER}", "User=")}),
             "runs as root; the goal asks for ops"),
    NearMiss("timer-units", "simple service",
             _with(commands={SERVICE_SHOW: SOLVED_COMMANDS[SERVICE_SHOW].replace("oneshot", "simple")}),
             "of type simple; the goal asks for a oneshot"),
    NearMiss("timer-units", "a cron job instead of units",
             _with(commands={SERVICE_SHOW: _props(LoadState="not-found", Type="simple", User="", ExecStart=""),
                             TIMER_SHOW: _props(LoadState="not-found", UnitFileState="", ActiveState="inactive",
                                                TimersCalendar="", Persistent="no")}),
             ("there is no notes-report.service unit", "there is no notes-report.timer unit")),
    NearMiss("timer-ran", "script run by hand",
             _with(commands={RAN_SHOW: _props(ExecMainStartTimestampMonotonic="0", Result="success",
                                              ExecMainStatus="0"), JOURNAL: ""}),
             "never ran (running the script by hand"),
    NearMiss("timer-ran", "run failed",
             _with(commands={RAN_SHOW: _props(ExecMainStartTimestampMonotonic="91234567", Result="exit-code",
                                              ExecMainStatus="1")}),
             "its last run failed (exit-code, exit status 1)"),
    NearMiss("logrotate", "daily", _with(files={ROTATE: render("logrotate.j2").replace("weekly", "daily")}),
             "rotates daily; the goal asks for weekly"),
    NearMiss("logrotate", "keeps 7", _with(files={ROTATE: render("logrotate.j2").replace("rotate 4", "rotate 7")}),
             "keeps 7 old copies; the goal asks for 4"),
    NearMiss("logrotate", "not compressed",
             _with(files={ROTATE: render("logrotate.j2").replace("    compress\n", "").replace("delaycompress\n", "")}),
             "old copies are not compressed"),
    NearMiss("logrotate", "another log's block",
             _with(files={ROTATE: render("logrotate.j2").replace(LOG, "/var/log/notes-backup/other.log")}),
             f"has no block for {LOG}"),
    NearMiss("logrotate", "dry run fails",
             _with(commands={LOGROTATE_DRY_RUN: Result(1, "", "error: notes-backup:9 unknown option 'wekly'\n")}),
             "dry run reports an error"),
]
