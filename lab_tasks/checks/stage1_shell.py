"""Stage 1 (shell & filesystem) checks: read-only probes on the learner host, one function per task.

Paths come from the role's defaults (lab.vars), so the role and the checks share one source.
"""
from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.registry import PROJECT_ROOT

ROLE_FILES = PROJECT_ROOT / "roles" / "stage1_shell" / "files"
IPV4_404 = re.compile(r'^[0-9]{1,3}(\.[0-9]{1,3}){3} [^"]*"[^"]*" 404 ')


def _answer(lab: Lab, key: str) -> str:
    return f"{lab.vars['stage1_shell_answers_dir']}/{lab.vars[key]}"


def _short(items) -> str:
    return ", ".join(sorted(items)) or "nothing"


def _read(host, path: str) -> str | None:
    """A file's text, or None when it is not a regular file."""
    f = host.file(path)
    return f.content_string if f.is_file else None


NOT_PLANTED = "the exercise is not planted; run `lab start stage1`"


def fhs(lab: Lab) -> Verdict:
    """Each drop file sits at its FHS place with the planted content; the tool stays executable."""
    host, wrong = lab.host(), []
    for name, place in lab.vars["stage1_shell_fhs_places"].items():
        f = host.file(place)
        want = hashlib.sha256((ROLE_FILES / "drop" / name).read_bytes()).hexdigest()
        if not (f.is_file and f.sha256sum == want) or (name == "lab-tool" and not f.mode & 0o111):
            wrong.append(name)
    left = host.run("ls -A %s", lab.vars["stage1_shell_drop_dir"]).stdout.split()
    return expect(not wrong and not left, expected="every tool file at its FHS place and the drop dir empty",
                  found=f"misplaced: {_short(wrong)}; still in the drop dir: {_short(left)}")


def glob(lab: Lab) -> Verdict:
    """Exactly the monthly 2020–2023 reports are gone."""
    planted = set(lab.vars["stage1_shell_report_files"])
    keep = {n for n in planted if not fnmatchcase(n, lab.vars["stage1_shell_reports_glob"])}
    found = set(lab.host().run("ls -A %s", lab.vars["stage1_shell_reports_dir"]).stdout.split())
    return expect(found == keep, expected=f"{len(keep)} files left",
                  found=f"{len(found)}; wrongly deleted: {_short(keep - found)}; "
                        f"should be gone: {_short(found - keep)}")


def symlink(lab: Lab) -> Verdict:
    """`current` is a symlink resolving to the target release."""
    app = lab.vars["stage1_shell_app_dir"]
    link = lab.host().file(f"{app}/current")
    want = f"{app}/releases/{lab.vars['stage1_shell_app_target_release']}"
    target = link.linked_to if link.is_symlink else "not a symlink" if link.exists else "missing"
    return expect(link.is_symlink and target == want, expected=f"{app}/current -> {want}", found=target)


def find_stale(lab: Lab) -> Verdict:
    """The answer lists exactly the files find selects (recomputed here with the same criteria)."""
    host = lab.host()
    data = lab.vars["stage1_shell_data_dir"]
    want = set(host.run("find %s -type f -size +1M -mtime +30", data).stdout.split())
    if not want:
        return Verdict(False, f"expected old big files under {data}; found none: {NOT_PLANTED}")
    text = _read(host, _answer(lab, "stage1_shell_find_answer"))
    got = {line.strip() for line in (text or "").split("\n") if line.strip()}
    return expect(got == want, expected=f"{len(want)} paths: {_short(want)}",
                  found=f"{len(got)} paths: {_short(got)}" if text is not None else "no answer file")


def grep_404(lab: Lab) -> Verdict:
    """The answer is byte-identical to the IPv4 + status 404 lines of the planted log."""
    host = lab.host()
    log = _read(host, lab.vars["stage1_shell_access_log"])
    if log is None:
        return Verdict(False, f"expected the log {lab.vars['stage1_shell_access_log']}; {NOT_PLANTED}")
    want = "".join(line for line in log.splitlines(keepends=True) if IPV4_404.match(line))
    got = _read(host, _answer(lab, "stage1_shell_grep_answer"))
    found = "no answer file" if got is None else f"{got.count(chr(10))} lines (sha256 {_sha(got)})"
    return expect(want and got == want,
                  expected=f"{want.count(chr(10))} lines (sha256 {_sha(want)})", found=found)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def redirect(lab: Lab) -> Verdict:
    """Each answer file holds exactly one stream of the program's output."""
    host = lab.host()
    run = host.run(lab.vars["stage1_shell_redirect_program"])
    wrong = [f"{stream} file {name}" for stream, name in lab.vars["stage1_shell_redirect_answers"].items()
             if _read(host, f"{lab.vars['stage1_shell_answers_dir']}/{name}") != getattr(run, stream)]
    return expect(run.stdout and run.stderr and not wrong, expected="stdout and stderr each in its own file",
                  found=f"wrong or missing: {_short(wrong)}")


def archive(lab: Lab) -> Verdict:
    """`tar -tzf` lists exactly the project's files under project/, without the scratch directory."""
    host = lab.host()
    project = PurePosixPath(lab.vars["stage1_shell_project_dir"])
    skip = f"{project}/{lab.vars['stage1_shell_project_exclude']}"
    files = host.run("find %s -path %s -prune -o -type f -print", str(project), skip).stdout.split()
    want = {str(PurePosixPath(f).relative_to(project.parent)) for f in files}
    listing = host.run("tar -tzf %s", _answer(lab, "stage1_shell_archive_answer"))
    if listing.rc != 0:
        return Verdict(False, f"expected a gzip tar listing; found tar -tzf failing: {' '.join(listing.stderr.split())}")
    got = {m.removeprefix("./") for m in listing.stdout.split("\n") if m and not m.endswith("/")}
    return expect(want and got == want, expected=f"members {_short(want)}",
                  found=f"missing {_short(want - got)}; unexpected {_short(got - want)}")
