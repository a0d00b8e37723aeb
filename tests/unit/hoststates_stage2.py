"""Recorded host states of stage 2 (users, permissions, sudo, ACLs): solved, and the near misses."""
from __future__ import annotations

import yaml

from hoststates import FakeFile, FakeGroup, FakeHost, FakeUser, NearMiss, Result, fake_lab
from lab_tasks.registry import PROJECT_ROOT

STAGE = "stage2"
V = yaml.safe_load((PROJECT_ROOT / "roles" / "stage2_users" / "defaults" / "main.yml").read_text())
GROUP, AUDITOR = V["stage2_users_group"], V["stage2_users_auditor"]
AUDIT_DIR, LEDGER, APP = V["stage2_users_audit_dir"], V["stage2_users_audit_file"], V["stage2_users_app_dir"]
SUDOERS, COMMAND = V["stage2_users_sudoers_file"], V["stage2_users_sudo_command"]
DENIED = ("/usr/bin/systemctl stop cron", "/bin/bash")
FIND_OPEN = f"find {APP} -perm -0002 '!' -type l"


def _dir(mode: int, user: str = "root", group: str = "root") -> FakeFile:
    return FakeFile(kind="directory", mode=mode, user=user, group=group)


def _getfacl(path: str, entry: str | None, mask: str = "r-x") -> str:
    lines = [f"# file: {path}", "# owner: root", "# group: root", "user::rwx" if path == AUDIT_DIR else "user::rw-"]
    if entry:
        lines.append(entry)
    lines += ["group::r-x" if path == AUDIT_DIR else "group::r--", f"mask::{mask}", "other::---"]
    return "\n".join(lines) + "\n"


def _chage(max_days: str = "90", warn: str = "14") -> str:
    return ("Last password change\t\t\t\t\t: Dec 02, 2026\n"
            f"Maximum number of days between password change\t\t: {max_days}\n"
            f"Number of days of warning before password expires\t: {warn}\n")


def _sudo(allowed: dict[str, set[str]], nopasswd: bool = True) -> dict[str, Result]:
    """`sudo -l -U` answers for every account and probe the check makes."""
    commands = {}
    for user in [a["name"] for a in V["stage2_users_accounts"]] + [AUDITOR]:
        mine = allowed.get(user, set())
        tag = "NOPASSWD: " if nopasswd else ""
        listing = "".join(f"    (root) {tag}{c}\n" for c in sorted(mine))
        commands[f"sudo -n -l -U {user}"] = Result(0, f"User {user} may run the following commands:\n{listing}"
                                                   if mine else f"User {user} is not allowed to run sudo.\n")
        for probe in (COMMAND, *DENIED):
            ok = probe in mine or "ALL" in mine
            commands[f"sudo -n -l -U {user} {probe}"] = Result(0 if ok else 1, f"{probe}\n" if ok else "")
    return commands


MEMBERS = {a["name"]: {COMMAND} for a in V["stage2_users_accounts"]}
APP_FILES = {f"{APP}/{p['path']}": (_dir(int(p["fixed_mode"], 8)) if p["state"] == "directory"
                                    else FakeFile("x\n", mode=int(p["fixed_mode"], 8)))
             for p in V["stage2_users_app_paths"]}


def solved_state() -> dict:
    files = {"/home/alice": _dir(0o750, "alice", "alice"), "/home/bob": _dir(0o755, "bob", "bob"),
             V["stage2_users_shared_dir"]: _dir(0o2770, "root", GROUP), V["stage2_users_drop_dir"]: _dir(0o1733),
             SUDOERS: FakeFile("%devs rule\n", mode=0o440), AUDIT_DIR: _dir(0o750),
             LEDGER: FakeFile("id,amount\n", mode=0o640)} | APP_FILES
    commands = {"runuser -l alice -c umask": "0027\n", f"visudo -c -f {SUDOERS}": f"{SUDOERS}: parsed OK\n",
                f"getfacl -p -e {AUDIT_DIR}": _getfacl(AUDIT_DIR, f"user:{AUDITOR}:r-x"),
                f"getfacl -p -e {LEDGER}": _getfacl(LEDGER, f"user:{AUDITOR}:r--", mask="r--"),
                f"runuser -u {AUDITOR} -- test -r {LEDGER}": Result(0), f"runuser -u {AUDITOR} -- test -w {LEDGER}": Result(1),
                "chage -l alice": _chage(), FIND_OPEN: ""} | _sudo(MEMBERS)
    users = [FakeUser(a["name"], a["uid"], a["shell"], groups=[a["name"], GROUP]) for a in V["stage2_users_accounts"]]
    users.append(FakeUser(AUDITOR, V["stage2_users_auditor_uid"]))
    return {"files": files, "commands": commands, "users": users,
            "groups": [FakeGroup(GROUP, V["stage2_users_group_gid"])]}


def host(files=None, commands=None, users=None, groups=None) -> FakeHost:
    state = solved_state()
    merged_users = {u.name: u for u in state["users"]} | {u.name: u for u in users or []}
    all_files = state["files"] | (files or {})
    return FakeHost(files={p: f for p, f in all_files.items() if f is not None},
                    commands=state["commands"] | (commands or {}), users=list(merged_users.values()),
                    groups=groups if groups is not None else state["groups"])


def solved(tmp_path=None):
    return fake_lab(STAGE, {"learner1": host()})


def _with(**changes):
    return lambda tmp_path: fake_lab(STAGE, {"learner1": host(**changes)})


def _alice(**attrs) -> list[FakeUser]:
    values = {"uid": 2001, "shell": "/bin/bash", "groups": ["alice", GROUP]} | attrs
    return [FakeUser("alice", **values)]


NEAR_MISSES = [
    NearMiss("accounts", "devs as alice's primary group", _with(users=_alice(group=GROUP, groups=[GROUP])),
             "alice's primary group is devs; the goal asks for a group of alice's own"),
    NearMiss("accounts", "bob with bash", _with(users=[FakeUser("bob", 2002, "/bin/bash", groups=["bob", GROUP])]),
             "bob's login shell is /bin/bash; the goal asks for /bin/sh"),
    NearMiss("accounts", "wrong UID", _with(users=_alice(uid=1001)), "alice has UID 1001; the goal asks for 2001"),
    NearMiss("accounts", "not in devs", _with(users=_alice(groups=["alice"])), "alice is not a member of devs"),
    NearMiss("accounts", "no home (useradd without -m)", _with(files={"/home/alice": None}),
             "alice has no home directory"),
    NearMiss("accounts", "group with the default GID", _with(groups=[FakeGroup(GROUP, 1001)]),
             "group devs has GID 1001; the goal asks for 2000"),
    NearMiss("private-home", "home 0700", _with(files={"/home/alice": _dir(0o700, "alice", "alice")}),
             "the group cannot read and enter it"),
    NearMiss("private-home", "home left 0755", _with(files={"/home/alice": _dir(0o755, "alice", "alice")}),
             "others have access (mode 0755)"),
    NearMiss("private-home", "umask set for the current shell only",
             _with(commands={"runuser -l alice -c umask": "0022\n"}), "the login umask is 0022"),
    NearMiss("private-home", "umask 077", _with(commands={"runuser -l alice -c umask": "0077\n"}),
             "keeps read access for the group"),
    NearMiss("special-dirs", "no setgid bit", _with(files={"/srv/devs": _dir(0o770, "root", GROUP)}),
             "lacks the setgid bit"),
    NearMiss("special-dirs", "group devs missing on the shared dir", _with(files={"/srv/devs": _dir(0o2770)}),
             "belongs to root:root; the goal asks for root:devs"),
    NearMiss("special-dirs", "drop box 1777", _with(files={"/srv/dropbox": _dir(0o1777)}),
             "people other than root may list /srv/dropbox"),
    NearMiss("special-dirs", "drop box without sticky bit", _with(files={"/srv/dropbox": _dir(0o733)}),
             "lacks the sticky bit"),
    NearMiss("special-dirs", "shared dir open to others", _with(files={"/srv/devs": _dir(0o2775, "root", GROUP)}),
             "others have access to /srv/devs"),
    NearMiss("sudoers", "everything allowed", _with(commands=_sudo({u: {"ALL"} for u in MEMBERS})),
             "alice may also run `/usr/bin/systemctl stop cron`"),
    NearMiss("sudoers", "password still asked", _with(commands=_sudo(MEMBERS, nopasswd=False)),
             "may not run `/usr/bin/systemctl restart cron` without a password"),
    NearMiss("sudoers", "rule for alice only", _with(commands=_sudo({"alice": {COMMAND}})),
             "bob may not run"),
    NearMiss("sudoers", "left mode 0644", _with(files={SUDOERS: FakeFile("%devs rule\n", mode=0o644)}),
             "found /etc/sudoers.d/devs is 0644 root:root"),
    NearMiss("sudoers", "syntax error", _with(commands={f"visudo -c -f {SUDOERS}": Result(
        1, f"{SUDOERS}:3:27: syntax error\n")}), "visudo:"),
    NearMiss("acl", "others given read instead of an ACL",
             _with(files={LEDGER: FakeFile("id\n", mode=0o644), AUDIT_DIR: _dir(0o755)},
                   commands={f"getfacl -p -e {AUDIT_DIR}": _getfacl(AUDIT_DIR, None),
                             f"getfacl -p -e {LEDGER}": _getfacl(LEDGER, None)}),
             ("has no ACL entry for carol", "opened to everyone")),
    NearMiss("acl", "read-write entry", _with(commands={
        f"getfacl -p -e {LEDGER}": _getfacl(LEDGER, f"user:{AUDITOR}:rw-", mask="rw-"),
        f"runuser -u {AUDITOR} -- test -w {LEDGER}": Result(0)}),
        ("gives rw- in effect", "carol can write")),
    NearMiss("acl", "directory entry without x", _with(commands={
        f"getfacl -p -e {AUDIT_DIR}": _getfacl(AUDIT_DIR, f"user:{AUDITOR}:r--"),
        f"runuser -u {AUDITOR} -- test -r {LEDGER}": Result(1)}),
        ("gives r-- in effect; the goal asks that she may read and enter", "carol cannot read")),
    NearMiss("acl", "entry masked out by a later chmod", _with(commands={
        f"getfacl -p -e {LEDGER}": _getfacl(LEDGER, f"user:{AUDITOR}:r--\t#effective:---", mask="---"),
        f"runuser -u {AUDITOR} -- test -r {LEDGER}": Result(1)}),
        "gives nothing in effect"),
    NearMiss("password-aging", "minimum instead of maximum", _with(commands={"chage -l alice": _chage("99999")}),
             "the maximum password age is 99999 days; the goal asks for 90"),
    NearMiss("password-aging", "default warning", _with(commands={"chage -l alice": _chage(warn="7")}),
             "the warning period is 7 days; the goal asks for 14"),
    NearMiss("world-writable", "only files fixed, not directories",
             _with(commands={FIND_OPEN: f"{APP}/uploads\n{APP}/logs\n"}), f"{APP}/uploads is still writable by others"),
    NearMiss("world-writable", "chmod -R 644", _with(files={f"{APP}/bin/deploy.sh": FakeFile("x\n", mode=0o644)}),
             "bin/deploy.sh lost its x bit"),
    NearMiss("world-writable", "deleted the open files", _with(files={f"{APP}/config.ini": None}),
             "config.ini was deleted"),
    NearMiss("world-writable", "chmod 700 on the tree", _with(files={f"{APP}/README": FakeFile("x\n", mode=0o600)}),
             "README is no longer readable"),
]
