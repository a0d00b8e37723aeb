"""Checks for stage 2: users, groups, permissions, sudo, ACLs and password aging.

Paths and names come from the role's defaults (`lab.vars`), the one place the
role and the checks share.
"""
from lab_tasks.checks import Lab, Verdict, expect
from lab_tasks.checks.common import run

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


def _stat(host, path: str) -> tuple | None:
    """(mode, owner, group) of a path, or None when it is missing."""
    file = host.file(path)
    return (file.mode, file.user, file.group) if file.exists else None


def _account_problems(host, account: dict, group: str) -> list[str]:
    """What is wrong with one account (UID, shell, membership, own primary group, home), in words."""
    name = account["name"]
    user = host.user(name)
    if not user.exists:
        return [f"there is no user {name}"]
    problems = []
    if user.uid != account["uid"]:
        problems.append(f"{name} has UID {user.uid}; the goal asks for {account['uid']}")
    if user.shell != account["shell"]:
        problems.append(f"{name}'s login shell is {user.shell}; the goal asks for {account['shell']}")
    if user.group != name:
        problems.append(f"{name}'s primary group is {user.group}; the goal asks for a group of {name}'s own"
                        + (f" and {group} as an extra group" if user.group == group else ""))
    elif group not in user.groups:
        problems.append(f"{name} is not a member of {group}")
    if not host.file(user.home).is_directory:
        problems.append(f"{name} has no home directory ({user.home} is missing)")
    return problems


def accounts(lab: Lab) -> Verdict:
    """Group with the given GID; users with given UIDs and shells, members of the group."""
    host, group = lab.host(), lab.vars["stage2_users_group"]
    gid = lab.vars["stage2_users_group_gid"]
    found_group = host.group(group)
    problems = [] if found_group.exists and found_group.gid == gid else [
        f"group {group} has GID {found_group.gid}; the goal asks for {gid}" if found_group.exists
        else f"there is no group {group}"]
    for account in lab.vars["stage2_users_accounts"]:
        problems += _account_problems(host, account, group)
    names = ", ".join(f"{a['name']} ({a['uid']}, {a['shell']})" for a in lab.vars["stage2_users_accounts"])
    return expect(not problems, expected=f"group {group} GID {gid}; users {names} in it, each with a home "
                  "and a primary group of their own", found="; ".join(problems) or "all of them")


def _home_problems(mode: int) -> list[str]:
    """How a home directory's mode misses "owner everything, group read and enter, others nothing"."""
    problems = []
    if mode & 0o700 != 0o700:
        problems.append("the owner lacks some rights on it")
    if mode & 0o050 != 0o050:
        problems.append("the group cannot read and enter it")
    if mode & 0o020:
        problems.append("the group can write it")
    if mode & 0o007:
        problems.append(f"others have access (mode {mode:04o})")
    return problems


def _umask_problems(umask: str) -> list[str]:
    """How a login umask misses "new files not readable by others, not writable by the group"."""
    try:
        value = int(umask, 8)
    except ValueError:
        return ["a login shell reports no umask"]
    problems = []
    if value & 0o007 != 0o007:
        problems.append(f"the login umask is {umask}, so others can still use new files")
    if not value & 0o020:
        problems.append(f"the login umask is {umask}, so the group can write new files")
    if value & 0o040 or value & 0o700:
        problems.append(f"the login umask is {umask}; the goal keeps read access for the group and "
                        "everything for the owner")
    return problems[:1]


def private_home(lab: Lab) -> Verdict:
    """The user's home is private to the group and a login shell for the user runs with the umask."""
    host, name = lab.host(), lab.vars["stage2_users_private_user"]
    user = host.user(name)
    goal = (f"{name}'s home: everything for her, read and enter for her group, nothing for others; "
            "her login shell's umask keeps new files from others and from group writes")
    if not user.exists:
        return expect(False, expected=goal, found=f"there is no user {name}")
    home = _stat(host, user.home)
    problems = [f"{user.home} is missing"] if home is None else _home_problems(home[0])
    problems += _umask_problems(run(host, "runuser", "-l", name, "-c", "umask").stdout.strip())
    return expect(not problems, expected=goal, found="; ".join(problems) or "exactly that")


def _shared_dir_problems(path: str, state: tuple | None, group: str) -> list[str]:
    """The team directory in words: root:group, setgid, full access for the group, none for others."""
    if state is None:
        return [f"there is no {path}"]
    mode, owner, owning_group = state
    problems = [] if (owner, owning_group) == ("root", group) else [
        f"{path} belongs to {owner}:{owning_group}; the goal asks for root:{group}"]
    if not mode & 0o2000:
        problems.append(f"{path} lacks the setgid bit, so new files get their creator's group")
    if mode & 0o070 != 0o070:
        problems.append(f"the group lacks full access to {path}")
    if mode & 0o007:
        problems.append(f"others have access to {path}")
    return problems


def _drop_dir_problems(path: str, state: tuple | None) -> list[str]:
    """The drop box in words: root:root, sticky, everyone may enter and write, only root may list."""
    if state is None:
        return [f"there is no {path}"]
    mode, owner, owning_group = state
    problems = [] if (owner, owning_group) == ("root", "root") else [
        f"{path} belongs to {owner}:{owning_group}; the goal asks for root:root"]
    if not mode & 0o1000:
        problems.append(f"{path} lacks the sticky bit, so anyone may delete other people's files")
    if mode & 0o033 != 0o033 or mode & 0o700 != 0o700:
        problems.append(f"not everyone may enter {path} and write into it")
    if mode & 0o044:
        problems.append(f"people other than root may list {path}")
    return problems


def special_dirs(lab: Lab) -> Verdict:
    """Shared setgid directory for the group and a sticky, write-only drop box."""
    host, group = lab.host(), lab.vars["stage2_users_group"]
    shared, drop = lab.vars["stage2_users_shared_dir"], lab.vars["stage2_users_drop_dir"]
    problems = (_shared_dir_problems(shared, _stat(host, shared), group)
                + _drop_dir_problems(drop, _stat(host, drop)))
    return expect(not problems, expected=f"{shared}: root:{group}, setgid, full access for the group, none "
                  f"for others; {drop}: root:root, sticky, everyone may enter and write, only root may list",
                  found="; ".join(problems) or "both right")


def _sudo_allows(host, user: str, command: str) -> bool:
    """Would sudo let `user` run `command` (`sudo -l -U`: lists, runs nothing)?"""
    return run(host, "sudo", "-n", "-l", "-U", user, *command.split()).rc == 0


def _sudo_problems(lab: Lab) -> list[str]:
    """Behaviour of the sudo policy: members may run the command, nothing broader, others nothing."""
    host, command = lab.host(), lab.vars["stage2_users_sudo_command"]
    problems = []
    for account in lab.vars["stage2_users_accounts"]:
        listing = run(host, "sudo", "-n", "-l", "-U", account["name"]).stdout
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
        return expect(False, expected=f"{path} 0440 root:root",
                      found=f"{path} is {describe(state)}" if state else f"there is no {path}")
    syntax = run(host, "visudo", "-c", "-f", path)
    problems = ([f"visudo: {syntax.stdout.strip() or syntax.stderr.strip()}"]
                if syntax.rc else _sudo_problems(lab))
    return expect(not problems, expected=f"members of {lab.vars['stage2_users_group']} may run "
                  f"`{lab.vars['stage2_users_sudo_command']}` without password, nothing more",
                  found="; ".join(problems) or "exactly that")


def _acl_problems(lab: Lab) -> list[str]:
    """Named ACL entries, base modes and the auditor's real access, in words."""
    host, who = lab.host(), lab.vars["stage2_users_auditor"]
    directory, ledger = lab.vars["stage2_users_audit_dir"], lab.vars["stage2_users_audit_file"]
    problems = []
    for path, needed, what in ((directory, "r-x", "read and enter"), (ledger, "r--", "read")):
        entries = {e.rsplit(":", 1)[0]: e.rsplit(":", 1)[1] for e in
                   acl_entries(run(host, "getfacl", "-p", "-e", path).stdout)}
        rights = entries.get(f"user:{who}")
        if rights is None:
            problems.append(f"{path} has no ACL entry for {who}")
        elif rights != needed:
            problems.append(f"{who}'s ACL entry on {path} gives {rights if rights.strip('-') else 'nothing'} in effect; "
                            f"the goal asks that she may {what}, nothing more")
        state = _stat(host, path)
        if state is not None and state[0] & 0o007:
            problems.append(f"{path} was opened to everyone (mode {state[0]:04o}); the goal keeps others out")
    if run(host, "runuser", "-u", who, "--", "test", "-r", ledger).rc != 0:
        problems.append(f"{who} cannot read {ledger}")
    if run(host, "runuser", "-u", who, "--", "test", "-w", ledger).rc == 0:
        problems.append(f"{who} can write {ledger}")
    return problems


def acl(lab: Lab) -> Verdict:
    """The auditor reads (only reads) the ledger through ACLs; others still have no access."""
    problems = _acl_problems(lab)
    who = lab.vars["stage2_users_auditor"]
    return expect(not problems, expected=f"ACL entries letting {who} enter the audit directory and read, "
                  "only read, the ledger; owners, groups and others' permissions unchanged",
                  found="; ".join(problems) or "exactly that")


def password_aging(lab: Lab) -> Verdict:
    """`chage -l` shows the maximum password age and the warning period."""
    name = lab.vars["stage2_users_aging_user"]
    want = {"max": str(lab.vars["stage2_users_password_max_days"]),
            "warn": str(lab.vars["stage2_users_password_warn_days"])}
    result = run(lab.host(), "chage", "-l", name)
    found = parse_chage(result.stdout) if result.rc == 0 else {}
    labels = {"max": "the maximum password age", "warn": "the warning period"}
    problems = [f"{labels[k]} is {found.get(k, 'unset')} days; the goal asks for {v}"
                for k, v in want.items() if found.get(k) != v]
    return expect(found == want, expected=f"{name}: password changed at least every {want['max']} days, "
                  f"warned {want['warn']} days before it expires",
                  found=("; ".join(problems) or "exactly that") if result.rc == 0
                  else f"`chage -l {name}` failed: {result.stderr.strip()[:80]}")


def world_writable(lab: Lab) -> Verdict:
    """Nothing under the app tree is world-writable; every planted path still exists, readable, x kept."""
    host, root = lab.host(), lab.vars["stage2_users_app_dir"]
    open_paths = run(host, "find", root, "-perm", "-0002", "!", "-type", "l").stdout.split()
    problems = [f"{path} is still writable by others" for path in open_paths]
    for planted in lab.vars["stage2_users_app_paths"]:
        path, state = f"{root}/{planted['path']}", _stat(host, f"{root}/{planted['path']}")
        if state is None:
            problems.append(f"{path} was deleted")
        elif not state[0] & 0o004:
            problems.append(f"{path} is no longer readable")
        elif int(planted["planted_mode"], 8) & 0o100 and not state[0] & 0o100:
            problems.append(f"{path} lost its x bit" + (" (a directory nobody can enter)"
                                                       if planted["state"] == "directory" else ""))
        elif int(planted["planted_mode"], 8) & 0o200 and not state[0] & 0o200:
            problems.append(f"{path} lost its owner's write access; only others' write should go")
    return expect(not problems, expected=f"no path under {root} writable by others, every file kept, "
                  "readable, and executables still executable",
                  found="; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
                  if problems else "none")
