"""Stage 1 (shell & filesystem) checks: read-only probes on the learner host, one function per task.

Paths come from the role's defaults (lab.vars), so the role and the checks share one source.
"""
from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import read
from lab_tasks.registry import PROJECT_ROOT

ROLE_FILES = PROJECT_ROOT / "roles" / "stage1_shell" / "files"
IPV4_404 = re.compile(r'^[0-9]{1,3}(\.[0-9]{1,3}){3} [^"]*"[^"]*" 404 ')


def _answer(lab: Lab, key: str) -> str:
    return f"{lab.vars['stage1_shell_answers_dir']}/{lab.vars[key]}"


def _short(items) -> str:
    return ", ".join(sorted(items)) or "nothing"


NOT_PLANTED = "the exercise is not planted; run `lab start stage1`"


def fhs(lab: Lab) -> Verdict:
    """Each drop file sits at its FHS place with the planted content; the tool stays executable."""
    host, problems = lab.host(), []
    for name, place in lab.vars["stage1_shell_fhs_places"].items():
        f = host.file(place)
        want = hashlib.sha256((ROLE_FILES / "drop" / name).read_bytes()).hexdigest()
        if not f.is_file:
            problems.append(f"{name} is not where the FHS puts it")
        elif f.sha256sum != want:
            problems.append(f"the {name} at its FHS place is not the planted file")
        elif name == "lab-tool" and not f.mode & 0o111:
            problems.append("lab-tool is no longer executable")
    left = host.run("ls -A %s", lab.vars["stage1_shell_drop_dir"]).stdout.split()
    if left:
        problems.append(f"still in the drop dir: {_short(left)} (moved means gone from there)")
    return expect(not problems, expected="every tool file at its FHS place, the program executable, the drop "
                  "dir empty", found="; ".join(problems) or "that")


def glob(lab: Lab) -> Verdict:
    """Exactly the monthly 2020–2023 reports are gone."""
    planted = set(lab.vars["stage1_shell_report_files"])
    keep = {n for n in planted if not fnmatchcase(n, lab.vars["stage1_shell_reports_glob"])}
    found = set(lab.host().run("ls -A %s", lab.vars["stage1_shell_reports_dir"]).stdout.split())
    return expect(found == keep, expected=f"{len(keep)} files left",
                  found=f"{len(found)}; wrongly deleted: {_short(keep - found)}; "
                        f"should be gone: {_short(found - keep)}")


def symlink(lab: Lab) -> Verdict:
    """`current` is a symlink resolving to the target release, and no release gained a stray link."""
    host, app = lab.host(), lab.vars["stage1_shell_app_dir"]
    link = host.file(f"{app}/current")
    want = f"{app}/releases/{lab.vars['stage1_shell_app_target_release']}"
    target = link.linked_to if link.is_symlink else None
    problems = []
    if not link.exists:
        problems.append(f"{app}/current is missing")
    elif not link.is_symlink:
        problems.append(f"{app}/current is no longer a symbolic link (a copy does not switch releases)")
    elif target != want:
        problems.append(f"{app}/current points to {target}")
    stray = host.run("find %s -mindepth 2 -type l", f"{app}/releases").stdout.split()
    if stray:
        problems.append(f"a release changed: {_short(stray)} is a new link inside it "
                        "(ln followed the old link into its directory)")
    return expect(not problems, expected=f"{app}/current a symbolic link to {want}, every release unchanged",
                  found="; ".join(problems) or "that")


def find_stale(lab: Lab) -> Verdict:
    """The answer lists exactly the files find selects (recomputed here with the same criteria)."""
    host = lab.host()
    data = lab.vars["stage1_shell_data_dir"]
    want = set(host.run("find %s -type f -size +1M -mtime +30", data).stdout.split())
    if not want:
        return Verdict(False, f"expected old big files under {data}; found none: {NOT_PLANTED}")
    path = _answer(lab, "stage1_shell_find_answer")
    text = read(host, path)
    got = {line.strip() for line in (text or "").split("\n") if line.strip()}
    problems = []
    if text is None:
        problems.append(f"there is no {path}")
    elif any(not p.startswith("/") for p in got):
        problems.append("the paths are not absolute")
    else:
        extra, missing = sorted(got - want), want - got
        if extra:
            problems.append(f"{extra[0]} is listed but is not both larger than 1 MiB and older than 30 days"
                            + (f" (and {len(extra) - 1} more like it)" if len(extra) > 1 else ""))
        if missing:
            problems.append(f"{len(missing)} of the {len(want)} files that qualify are missing")
    return expect(not problems, expected=f"{path} listing every regular file under {data} larger than 1 MiB "
                  "and older than 30 days, one absolute path per line", found="; ".join(problems) or "that")


def grep_404(lab: Lab) -> Verdict:
    """The answer is exactly the IPv4 + status 404 lines of the planted log, unchanged and in order."""
    host = lab.host()
    log = read(host, lab.vars["stage1_shell_access_log"])
    if log is None:
        return Verdict(False, f"expected the log {lab.vars['stage1_shell_access_log']}; {NOT_PLANTED}")
    lines = log.splitlines()
    want = [line for line in lines if IPV4_404.match(line)]
    path = _answer(lab, "stage1_shell_grep_answer")
    got = read(host, path)
    found = None if got is None else [line for line in got.splitlines() if line]
    problems = [f"there is no {path}"] if found is None else _grep_problems(want, found, set(lines))
    return expect(not problems, expected=f"{path} holding the {len(want)} log lines of IPv4 clients answered "
                  "with 404, unchanged and in log order", found="; ".join(problems) or "exactly those")


def _grep_problems(want: list[str], found: list[str], log: set[str]) -> list[str]:
    if found == want:
        return []
    extra = [line for line in found if line not in want]
    problems = []
    if any(line not in log for line in extra):
        problems.append("some lines are not lines of the log (they must stay unchanged)")
    fields = [line.split('"') for line in extra if line in log]
    if any(not re.match(r"^[0-9]{1,3}(\.[0-9]{1,3}){3} ", line) for line in extra if line in log):
        problems.append("it has lines whose client is not an IPv4 address")
    if any(len(f) > 2 and not f[2].strip().startswith("404 ") for f in fields):
        problems.append("it has lines whose status is not 404 (404 also appears in paths and sizes)")
    missing = [line for line in want if line not in found]
    if missing:
        problems.append(f"{len(missing)} of the {len(want)} matching lines are missing")
    return problems or ["the right lines, but not in log order or repeated"]


def redirect(lab: Lab) -> Verdict:
    """Each answer file holds exactly one stream of the program's output."""
    host = lab.host()
    run = host.run(lab.vars["stage1_shell_redirect_program"])
    answers = lab.vars["stage1_shell_answers_dir"]
    problems = []
    for stream, name in lab.vars["stage1_shell_redirect_answers"].items():
        content = read(host, f"{answers}/{name}")
        other = "stderr" if stream == "stdout" else "stdout"
        if content is None:
            problems.append(f"there is no {answers}/{name}")
        elif content == getattr(run, other):
            problems.append(f"{name} holds the program's {other}; the goal asks for its {stream}")
        elif content != getattr(run, stream):
            problems.append(f"{name} is not exactly the program's {stream}"
                            + (" (both streams mixed in it)" if getattr(run, other).strip().splitlines()[0]
                               in content else ""))
    return expect(run.stdout and run.stderr and not problems,
                  expected="its stdout alone in inventory.out and its stderr alone in inventory.err",
                  found="; ".join(problems) or "that")


def archive(lab: Lab) -> Verdict:
    """`tar -tzf` lists exactly the project's files under project/, without the scratch directory."""
    host = lab.host()
    project = PurePosixPath(lab.vars["stage1_shell_project_dir"])
    skip = f"{project}/{lab.vars['stage1_shell_project_exclude']}"
    files = host.run("find %s -path %s -prune -o -type f -print", str(project), skip).stdout.split()
    want = {str(PurePosixPath(f).relative_to(project.parent)) for f in files}
    listing = host.run("tar -tzf %s", _answer(lab, "stage1_shell_archive_answer"))
    if listing.rc != 0:
        said = " ".join(listing.stderr.split())[:120]
        return Verdict(False, f"expected a gzip-compressed tar archive; found one tar cannot list: {said}")
    got = {m.removeprefix("./") for m in listing.stdout.split("\n") if m and not m.endswith("/")}
    problems = []
    if got and not any(m.startswith(f"{project.name}/") for m in got):
        problems.append(f"no member starts with {project.name}/ (the first is {sorted(got)[0]}), so it does not "
                        f"unpack to a {project.name}/ directory")
    else:
        if got - want:
            problems.append(f"unexpected members: {_short(got - want)}")
        if want - got:
            problems.append(f"missing members: {_short(want - got)}")
    return expect(want and got == want, expected=f"a gzip tar archive unpacking to {project.name}/ with every "
                  f"file of {project} except {lab.vars['stage1_shell_project_exclude']}/",
                  found="; ".join(problems) or "that")
