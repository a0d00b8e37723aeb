"""Checks for stage 2: users, groups, permissions, sudo, ACLs and password aging.

Paths and names come from the role's defaults (`lab.vars`), the one place the
role and the checks share.
"""
import shlex

from lab_tasks.checks import Lab, Verdict, expect

# Commands the sudo rule must NOT allow: a wildcard or an ALL rule would let these through.
DENIED_SUDO_COMMANDS = ("/usr/bin/systemctl stop cron", "/bin/bash")
CHAGE_FIELDS = {
    "max": "Maximum number of days between password change",
    "warn": "Number of days of warning before password expires",
}


def parse_chage(output: str) -> dict[str, str]:
    """`chage -l` output (C locale) -> {'max': '90', 'warn': '14', ...}."""
    values = {}
    for line in output.splitlines():
        label, _, value = line.partition(":")
        for key, wanted in CHAGE_FIELDS.items():
            if label.strip() == wanted:
                values[key] = value.strip()
    return values


def acl_entries(getfacl_output: str) -> set[str]:
    """The effective named entries of `getfacl` output, e.g. {'user:carol:r--'}."""
    entries = set()
    for line in getfacl_output.splitlines():
        entry, _, effective = line.partition("#effective:")
        entry = entry.strip()
        if entry.startswith(("user:", "group:")) and entry.split(":")[1]:
            name_part = entry.rsplit(":", 1)[0]
            entries.add(f"{name_part}:{effective.strip()}" if effective else entry)
    return entries


def describe(state: tuple | None) -> str:
    """(mode, owner, group) -> '2770 root:devs'; None -> 'missing'."""
    return "missing" if state is None else f"{state[0]:04o} {state[1]}:{state[2]}"


def mode_problems(found: dict[str, tuple | None], wanted: dict[str, tuple]) -> list[str]:
    """Compare {path: (mode, owner, group)} maps; describe each mismatch."""
    return [f"{path} is {describe(found.get(path))}, expected {describe(want)}"
            for path, want in wanted.items() if found.get(path) != want]


def _run(host, *argv: str):
    """Run a read-only command, arguments quoted, in the C locale."""
    return host.run("LC_ALL=C " + " ".join(shlex.quote(arg) for arg in argv))


def _stat(host, path: str) -> tuple | None:
    """(mode, owner, group) of a path, or None when it is missing."""
    file = host.file(path)
    return (file.mode, file.user, file.group) if file.exists else None


def _account_problems(host, account: dict, group: str) -> list[str]:
    """What is wrong with one account (UID, shell, membership)."""
    user = host.user(account["name"])
    if not user.exists:
        return [f"no user {account['name']}"]
    found = (user.uid, user.shell, group in user.groups)
    want = (account["uid"], account["shell"], True)
    if found == want:
        return []
    return [f"{account['name']} has uid {user.uid}, shell {user.shell}, "
            f"groups {','.join(user.groups)}; expected uid {want[0]}, shell {want[1]}, in {group}"]


def accounts(lab: Lab) -> Verdict:
    """Group with the given GID; users with given UIDs and shells, members of the group."""
    host, group = lab.host(), lab.vars["stage2_users_group"]
    gid = lab.vars["stage2_users_group_gid"]
    found_group = host.group(group)
    problems = [] if found_group.exists and found_group.gid == gid else [
        f"group {group} " + (f"has GID {found_group.gid}" if found_group.exists else "missing")]
    for account in lab.vars["stage2_users_accounts"]:
        problems += _account_problems(host, account, group)
    names = ", ".join(f"{a['name']} ({a['uid']}, {a['shell']})" for a in lab.vars["stage2_users_accounts"])
    return expect(not problems, expected=f"group {group} GID {gid}; users {names} in it",
                  found="; ".join(problems) or "all of them")


def private_home(lab: Lab) -> Verdict:
    """The user's home is mode 0750 and a login shell for the user runs with the umask."""
    host, name = lab.host(), lab.vars["stage2_users_private_user"]
    umask = lab.vars["stage2_users_umask"]
    user = host.user(name)
    if not user.exists:
        return expect(False, expected=f"user {name}", found="no such user")
    home = _stat(host, user.home)
    login_umask = _run(host, "runuser", "-l", name, "-c", "umask").stdout.strip()
    found = f"home {user.home} mode " + ("missing" if home is None else f"{home[0]:04o}")
    return expect(home is not None and home[0] == 0o750 and login_umask == umask,
                  expected=f"home mode 0750, login umask {umask}",
                  found=f"{found}, login umask {login_umask or '?'}")


def special_dirs(lab: Lab) -> Verdict:
    """Shared setgid directory (2770 root:group) and sticky drop box (1733 root:root)."""
    host, group = lab.host(), lab.vars["stage2_users_group"]
    wanted = {lab.vars["stage2_users_shared_dir"]: (0o2770, "root", group),
              lab.vars["stage2_users_drop_dir"]: (0o1733, "root", "root")}
    found = {path: _stat(host, path) for path in wanted}
    problems = mode_problems(found, wanted)
    return expect(not problems, expected="; ".join(f"{p} {describe(w)}" for p, w in wanted.items()),
                  found="; ".join(problems) or "both right")


def _sudo_allows(host, user: str, command: str) -> bool:
    """Would sudo let `user` run `command` (`sudo -l -U`: lists, runs nothing)?"""
    return _run(host, "sudo", "-n", "-l", "-U", user, *command.split()).rc == 0


def _sudo_problems(lab: Lab) -> list[str]:
    """Behaviour of the sudo policy: members may run the command, nothing broader, others nothing."""
    host, command = lab.host(), lab.vars["stage2_users_sudo_command"]
    problems = []
    for account in lab.vars["stage2_users_accounts"]:
        listing = _run(host, "sudo", "-n", "-l", "-U", account["name"]).stdout
        if not _sudo_allows(host, account["name"], command) or "NOPASSWD" not in listing:
            problems.append(f"{account['name']} may not run `{command}` without a password")
        problems += [f"{account['name']} may also run `{denied}`" for denied in DENIED_SUDO_COMMANDS
                     if _sudo_allows(host, account["name"], denied)]
    if _sudo_allows(host, lab.vars["stage2_users_auditor"], command):
        problems.append(f"{lab.vars['stage2_users_auditor']} (not in the group) may run it too")
    return problems


def sudoers(lab: Lab) -> Verdict:
    """Valid drop-in (visudo -cf, 0440 root) letting the group run exactly one command."""
    host, path = lab.host(), lab.vars["stage2_users_sudoers_file"]
    state = _stat(host, path)
    if state != (0o440, "root", "root"):
        return expect(False, expected=f"{path} 0440 root:root", found=describe(state))
    syntax = _run(host, "visudo", "-c", "-f", path)
    problems = ([f"visudo: {syntax.stdout.strip() or syntax.stderr.strip()}"]
                if syntax.rc else _sudo_problems(lab))
    return expect(not problems, expected=f"members of {lab.vars['stage2_users_group']} may run "
                  f"`{lab.vars['stage2_users_sudo_command']}` without password, nothing more",
                  found="; ".join(problems) or "exactly that")


def _acl_problems(lab: Lab) -> list[str]:
    """Named ACL entries, base modes and the auditor's real access."""
    host, who = lab.host(), lab.vars["stage2_users_auditor"]
    directory, ledger = lab.vars["stage2_users_audit_dir"], lab.vars["stage2_users_audit_file"]
    problems = []
    for path, entry in ((directory, f"user:{who}:r-x"), (ledger, f"user:{who}:r--")):
        entries = acl_entries(_run(host, "getfacl", "-p", "-e", path).stdout)
        if entry not in entries:
            problems.append(f"{path} has {sorted(entries) or 'no named entries'}, expected {entry}")
        state = _stat(host, path)
        if state is not None and state[0] & 0o007:
            problems.append(f"{path} opened to everyone (mode {state[0]:04o})")
    if _run(host, "runuser", "-u", who, "--", "test", "-r", ledger).rc != 0:
        problems.append(f"{who} cannot read {ledger}")
    if _run(host, "runuser", "-u", who, "--", "test", "-w", ledger).rc == 0:
        problems.append(f"{who} can write {ledger}")
    return problems


def acl(lab: Lab) -> Verdict:
    """The auditor reads (only reads) the ledger through ACLs; others still have no access."""
    problems = _acl_problems(lab)
    who = lab.vars["stage2_users_auditor"]
    return expect(not problems, expected=f"ACL entries user:{who}:r-x on the directory and "
                  f"user:{who}:r-- on the ledger, no access for others",
                  found="; ".join(problems) or "exactly that")


def password_aging(lab: Lab) -> Verdict:
    """`chage -l` shows the maximum password age and the warning period."""
    name = lab.vars["stage2_users_aging_user"]
    want = {"max": str(lab.vars["stage2_users_password_max_days"]),
            "warn": str(lab.vars["stage2_users_password_warn_days"])}
    result = _run(lab.host(), "chage", "-l", name)
    found = parse_chage(result.stdout) if result.rc == 0 else {}
    return expect(found == want, expected=f"{name}: max {want['max']} days, warn {want['warn']} days",
                  found=f"max {found.get('max', '?')}, warn {found.get('warn', '?')}"
                  if found else f"`chage -l {name}` failed")


def world_writable(lab: Lab) -> Verdict:
    """Nothing under the app tree is world-writable; every planted path still exists and is readable."""
    host, root = lab.host(), lab.vars["stage2_users_app_dir"]
    open_paths = _run(host, "find", root, "-perm", "-0002", "!", "-type", "l").stdout.split()
    problems = [f"{path} is world-writable" for path in open_paths]
    for planted in lab.vars["stage2_users_app_paths"]:
        state = _stat(host, f"{root}/{planted['path']}")
        if state is None or not state[0] & 0o004:
            problems.append(f"{root}/{planted['path']} " + ("deleted" if state is None else "unreadable"))
    return expect(not problems, expected=f"no world-writable path under {root}, all files kept readable",
                  found="; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
                  if problems else "none")
