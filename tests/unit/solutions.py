"""Derive what a stage's reference solution types and writes, from its role's solve tasks.

`fragments(stage)` walks roles/<role>/tasks/solve.yml (and every include_tasks/import_tasks/include_role/
import_role it reaches, block/rescue/always, loops), renders each task with ansible's own Templar over the
role defaults and vars, lab_tasks/ports.yml and the stage hosts' topology variables, and collects per module:

- command/shell/raw/script: the command line, its arguments without the program, its arguments without
  paths (`-type f -size +1M -mtime +30`), and every long argument alone (a regex, an awk program);
- copy content and src files, template rendered content, lineinfile line, blockinfile block: every line;
- replace: the substitution; cron: the job, its five time fields and the whole line;
- where files go (dest/path of copy, template, file, lineinfile, blockinfile, replace),
  file/copy/template mode (octal), acl `u:NAME:PERMS` and `user:NAME:r-x`, systemd/service verbs
  (`enable --now NAME`, `systemctl start NAME`), and any other module's string arguments (generic fallback).

Tasks whose arguments need runtime results (registered variables, gathered facts) cannot be rendered:
they are counted in `Derived.skipped`, never silently dropped. A fragment that any goal of the stage states
(a path, a user name, 128 MiB) is public and not screened.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# ansible fixes its settings when first imported, and lab_tasks.topology parses inventories with this one
# set: importing ansible here first must not change how the CLI tests in the same process see inventories
os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "1")
try:  # ansible replaces sys.intern with an object, and torch._dynamo imported after that refuses to load;
    import torch._dynamo  # noqa: F401  (so a session that collects this module first still runs the torch tests)
except ImportError:
    pass
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from lab_tasks.registry import PROJECT_ROOT, Stage
from lab_tasks.topology import ports, topology, vips

ROLES = PROJECT_ROOT / "roles"
TASK_KEYWORDS = {
    "name", "register", "when", "loop", "loop_control", "with_items", "with_dict", "notify", "listen",
    "changed_when", "failed_when", "check_mode", "become", "become_user", "delegate_to", "run_once", "tags",
    "vars", "no_log", "environment", "args", "until", "retries", "delay", "ignore_errors", "block", "rescue",
    "always", "any_errors_fatal", "throttle", "timeout", "diff", "delegate_facts", "local_action",
}
INCLUDES_TASKS = {"include_tasks", "import_tasks"}
INCLUDES_ROLE = {"include_role", "import_role"}
NOT_ANSWERS = {"meta", "debug", "assert", "fail", "set_fact", "include_vars", "wait_for", "pause", "stat", "setup",
               "add_host", "group_by", "uri", "get_url", "slurp", "fetch", "package_facts",
               "service_facts", "find"}  # probes and plumbing; `find` is screened through its patterns
# Values that are plumbing, not answers (state words, booleans, owners every task uses).
PLUMBING = {"present", "absent", "directory", "file", "link", "started", "stopped", "restarted",
            "reloaded", "true", "false", "yes", "no", "root", "touch", "hard", "latest"}
MODE = re.compile(r"^0?[0-7]?[0-7]{3}$")
DEFAULT_MODES = {"644", "755"}  # what files and directories get anyway: no answer


@dataclass
class Derived:
    """One stage's solution fragments, where each came from, and what could not be rendered."""

    fragments: dict[str, str] = field(default_factory=dict)  # fragment -> "role/file: task name"
    modes: dict[str, str] = field(default_factory=dict)      # octal mode "2770" -> origin
    skipped: list[str] = field(default_factory=list)         # "role/file: task name (why)"

    def add(self, text: str, origin: str) -> None:
        text = " ".join(str(text).split())
        if _distinctive(text):
            self.fragments.setdefault(text, origin)


def _distinctive(text: str) -> bool:
    """Long enough and specific enough that finding it in a hint means the hint hands it over."""
    if len(text) < 8 or text.lower() in PLUMBING or text.startswith(("#", ";", "//")):
        return False
    return bool(re.search(r"[\s=:/*\[\]{}|$<>%@]", text)) or len(text) >= 12


def _host_vars(host: str) -> dict:
    """The inventory variables `lab sandbox up` gives a host, from topology.yml."""
    topo = topology()
    groups: dict[str, list[str]] = {"all": list(topo["hosts"])}
    for name, entry in topo["hosts"].items():
        for group in entry.get("groups", []):
            groups.setdefault(group, []).append(name)
    hostvars = {n: {"ansible_host": e["address"], "inventory_hostname": n} for n, e in topo["hosts"].items()}
    return {"inventory_hostname": host, "ansible_host": topo["hosts"][host]["address"], "groups": groups,
            "hostvars": hostvars, "ansible_managed": "Ansible managed", "inventory_file": "inventory",
            "ansible_playbook_python": "/usr/bin/python3",
            **{topo["vips"][g]["variable"]: address for g, address in vips().items()}}


def _role_vars(role: str) -> dict:
    values = {}
    for sub in ("defaults", "vars"):
        path = ROLES / role / sub / "main.yml"
        if path.is_file():
            values |= yaml.safe_load(path.read_text()) or {}
    return values


def _trusted(value):
    """Mark strings from our own role files as templates (ansible 2.19 renders only trusted text)."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


class _Walker:
    def __init__(self, stage: Stage, host: str, derived: Derived):
        self.stage, self.host, self.derived = stage, host, derived
        self.seen: set[tuple[str, str]] = set()
        self.facts: dict = {}  # set_fact and include_vars results: they outrank role variables

    def templar(self, variables: dict) -> Templar:
        return Templar(loader=DataLoader(), variables=_trusted(variables))

    def render(self, value, variables: dict):
        return self.templar(variables).template(_trusted(value))

    def walk_file(self, role: str, path: Path, variables: dict) -> None:
        if not path.is_file():
            self.derived.skipped.append(f"{role}/{path.name} (missing file)")
            return
        variables = variables | {"role_path": str(ROLES / role)}
        for task in yaml.safe_load(path.read_text()) or []:
            self.walk_task(role, path, task, variables)

    def walk_task(self, role: str, path: Path, task: dict, variables: dict) -> None:
        origin = f"{role}/{path.name}: {task.get('name', '?')}"
        scope = variables | self.facts | (task.get("vars") or {})
        if "block" in task:
            for key in ("block", "rescue", "always"):
                for sub in task.get(key) or []:
                    self.walk_task(role, path, sub, scope)
            return
        module, args = _module(task)
        if module is None:
            return
        try:
            if not self._applies(task, scope):
                return
            items = self._items(task, scope)
        except AnsibleError as exc:
            self.derived.skipped.append(f"{origin} ({_first_line(exc)})")
            return
        loop_var = (task.get("loop_control") or {}).get("loop_var", "item")
        for item in items:
            item_scope = scope | ({loop_var: item} if item is not _NO_ITEM else {})
            try:
                self._module(role, path, module, args, item_scope, origin)
            except AnsibleError as exc:
                self.derived.skipped.append(f"{origin} ({_first_line(exc)})")

    def _applies(self, task: dict, scope: dict) -> bool:
        when = task.get("when")
        if when is None:
            return True
        conditions = when if isinstance(when, list) else [when]
        try:
            return all(self.render("{{ (" + str(c) + ") | bool }}", scope) in (True, "True") for c in conditions)
        except AnsibleError:
            return True  # a runtime condition: the task may run, so its answers count

    def _items(self, task: dict, scope: dict) -> list:
        loop = task.get("loop", task.get("with_items"))
        if loop is None:
            return [_NO_ITEM]
        rendered = self.render(loop, scope)
        return list(rendered) if isinstance(rendered, (list, tuple)) else [rendered]

    def _module(self, role: str, path: Path, module: str, args, scope: dict, origin: str) -> None:
        if module in INCLUDES_TASKS:
            name = self.render(args if isinstance(args, str) else args.get("file"), scope)
            self.walk_file(role, path.parent / name, scope)
        elif module in INCLUDES_ROLE:
            other = self.render(args["name"], scope)
            entry = self.render(args.get("tasks_from", "main"), scope)
            if (other, entry) in self.seen:
                return
            self.seen.add((other, entry))
            task_file = ROLES / other / "tasks" / (entry if entry.endswith(".yml") else f"{entry}.yml")
            # the included role's defaults sit under the caller's variables, as in ansible
            self.walk_file(other, task_file, _role_vars(other) | scope)
        elif module not in NOT_ANSWERS:
            collect(self.derived, role, module, self.render(args, scope), scope, origin, self)
        elif module == "set_fact":
            self.facts |= {k: self.render(v, scope) for k, v in args.items() if k != "cacheable"}
        elif module == "include_vars":
            self._include_vars(role, args, scope)
        elif module == "find":
            rendered = self.render(args, scope)
            for pattern in _as_list(rendered.get("patterns")):
                self.derived.add(pattern, origin)


    def _include_vars(self, role: str, args, scope: dict) -> None:
        name = self.render(args if isinstance(args, str) else args.get("file") or args.get("_raw_params"),
                           scope)
        for candidate in _as_list(name):
            path = Path(str(candidate)) if str(candidate).startswith("/") else ROLES / role / "vars" / str(candidate)
            if path.is_file():
                self.facts |= yaml.safe_load(path.read_text()) or {}
                return


_NO_ITEM = object()


def _module(task: dict):
    for key, value in task.items():
        if key not in TASK_KEYWORDS:
            return key.rsplit(".", 1)[-1], value
    return None, None


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120]


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def collect(derived: Derived, role: str, module: str, args, scope: dict, origin: str, walker: _Walker) -> None:
    """The answer fragments of one rendered module call."""
    if isinstance(args, str):  # free-form (`shell: cmd`)
        args = {"_raw_params": args}
    args = args or {}
    if module in ("command", "shell", "raw", "script"):
        argv = args.get("argv")
        lines = [shlex.join(str(a) for a in argv)] if argv else \
            [line for line in str(args.get("cmd") or args.get("_raw_params") or "").splitlines()]
        for line in lines:
            _command_fragments(derived, line, origin)
        return
    # where a file goes can be the answer (stage 1's FHS places); `file` without a state only changes a
    # path that is already there (planted), which is no answer
    if module != "file" or args.get("state") in ("directory", "link", "touch", "hard"):
        for key in ("dest", "path"):
            if key in args and module in ("copy", "template", "file", "lineinfile", "blockinfile", "replace"):
                derived.add(str(args[key]), origin)
    if "mode" in args and MODE.match(str(args["mode"])):
        mode = str(args["mode"]).lstrip("0").rjust(3, "0")
        if mode not in DEFAULT_MODES:
            derived.modes.setdefault(mode, origin)
    if module == "copy":
        text = args.get("content")
        if text is None and args.get("src"):
            source = ROLES / role / "files" / str(args["src"])
            text = source.read_text(errors="replace") if source.is_file() else None
        _lines(derived, text, origin)
    elif module == "template":
        source = ROLES / role / "templates" / str(args["src"])
        _lines(derived, walker.render(source.read_text(), scope), origin)
    elif module == "lineinfile":
        derived.add(args.get("line", ""), origin)
    elif module == "blockinfile":
        _lines(derived, args.get("block"), origin)
    elif module == "replace":
        derived.add(args.get("replace", ""), origin)
        derived.add(f"s/{args.get('regexp', '')}/{args.get('replace', '')}/", origin)
    elif module == "cron":
        times = " ".join(str(args.get(k, "*")) for k in ("minute", "hour", "day", "month", "weekday"))
        derived.add(args.get("job", ""), origin)
        derived.add(times, origin)
        derived.add(f"{times} {args.get('job', '')}", origin)
    elif module == "acl":
        perms = str(args.get("permissions", ""))
        full = "".join(c if c in perms else "-" for c in "rwx")
        derived.add(f"{args.get('etype', 'user')[0]}:{args.get('entity')}:{perms}", origin)
        derived.add(f"{args.get('etype', 'user')}:{args.get('entity')}:{full}", origin)
    elif module in ("systemd", "systemd_service", "service"):
        name = args.get("name")
        if args.get("enabled") in (True, "true", "yes") and args.get("state") == "started":
            derived.add(f"enable --now {name}", origin)
        if args.get("state") in ("started", "restarted", "reloaded"):
            verb = {"started": "start", "restarted": "restart", "reloaded": "reload"}[args["state"]]
            derived.add(f"systemctl {verb} {name}", origin)
    else:
        _generic(derived, args, origin)


def _command_fragments(derived: Derived, line: str, origin: str) -> None:
    derived.add(line, origin)
    try:
        tokens = shlex.split(line)
    except ValueError:
        return
    if len(tokens) >= 3:
        derived.add(" ".join(tokens[1:]), origin)
        no_paths = [t for t in tokens[1:] if not t.startswith("/")]
        if len(no_paths) >= 2:
            derived.add(" ".join(no_paths), origin)
    for token in tokens[1:]:
        if len(token) >= 10 and not token.startswith("/"):
            derived.add(token, origin)


def _lines(derived: Derived, text, origin: str) -> None:
    for line in str(text or "").splitlines():
        derived.add(line.strip(), origin)


def _generic(derived: Derived, value, origin: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("dest", "path", "owner", "group", "state", "name"):
                _generic(derived, item, origin)
    elif isinstance(value, list):
        for item in value:
            _generic(derived, item, origin)
    elif isinstance(value, str):
        _lines(derived, value, origin)


@functools.lru_cache(maxsize=None)
def derive(stage: Stage) -> Derived:
    """Every fragment of the stage's reference solution, rendered for each of the stage's hosts."""
    init_plugin_loader()
    derived = Derived()
    topo = topology()
    pattern = set(stage.hosts)
    hosts = [n for n, e in topo["hosts"].items() if n in pattern or pattern & set(e.get("groups", []))]
    solve = ROLES / stage.role / "tasks" / "solve.yml"
    for host in hosts:
        # every stage role's defaults underneath, as a stage role may read an earlier stage's settings
        variables = _all_stage_defaults() | _role_vars(stage.role) | ports_as_vars() | _host_vars(host)
        _Walker(stage, host, derived).walk_file(stage.role, solve, variables)
    derived.skipped = sorted(set(derived.skipped))
    return derived


def _all_stage_defaults() -> dict:
    merged = {}
    for path in sorted(ROLES.glob("stage*/defaults/main.yml")):
        merged |= yaml.safe_load(path.read_text()) or {}
    return merged


def ports_as_vars() -> dict:
    """playbooks/stage.yml loads lab_tasks/ports.yml as vars_files."""
    return yaml.safe_load((PROJECT_ROOT / "lab_tasks" / "ports.yml").read_text()) or {} if ports() else {}
