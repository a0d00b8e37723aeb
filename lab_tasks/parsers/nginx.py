"""A small parser for `nginx -T` output: directives, blocks, upstreams, log formats, access logs."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

TOKEN = re.compile(r"""\s*(?:(\#[^\n]*)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([{};])|([^\s{};'"]+))""")


@dataclass
class Directive:
    """One directive: its name, arguments (quotes stripped) and, for a block, its children."""

    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)
    is_block: bool = False

    def find(self, name: str) -> list[Directive]:
        """Direct children called `name`."""
        return [d for d in self.children if d.name == name]

    def walk(self) -> Iterator[Directive]:
        """Every directive below this one, depth first."""
        for child in self.children:
            yield child
            yield from child.walk()


def tokens(text: str) -> Iterator[str]:
    """Words, quoted strings (unquoted) and the punctuation `{ } ;`; comments dropped."""
    for comment, quoted, punct, word in TOKEN.findall(text):
        if comment:
            continue
        if quoted:
            yield quoted[1:-1]
        else:
            yield punct or word


def parse(text: str) -> Directive:
    """The whole text as one root block (nginx -T concatenates every file; they all land here)."""
    stack = [Directive("root", [], is_block=True)]
    words: list[str] = []
    for token in tokens(text):
        if token in ("{", ";"):
            directive = Directive(words[0] if words else "", words[1:], is_block=token == "{")
            stack[-1].children.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            if len(stack) > 1:
                stack.pop()
            words = []
        else:
            words.append(token)
    return stack[0]


def upstreams(root: Directive) -> dict[str, Directive]:
    """Every upstream block by name."""
    return {d.args[0]: d for d in root.walk() if d.name == "upstream" and d.is_block and d.args}


def servers(root: Directive) -> list[Directive]:
    """Every `server { }` block (not the server lines inside upstreams)."""
    return [d for d in root.walk() if d.name == "server" and d.is_block]


def listens_on(server: Directive, port: int) -> bool:
    """Whether a server block listens on `port` (any address)."""
    return any(re.fullmatch(rf"(?:.*:)?{port}", d.args[0]) for d in server.find("listen") if d.args)


def server_options(upstream: Directive) -> dict[str, dict[str, str]]:
    """{address: {option: value}} of an upstream's server lines (`backup` maps to "")."""
    options = {}
    for line in upstream.find("server"):
        pairs = (arg.partition("=") for arg in line.args[1:])
        options[line.args[0]] = {key: value for key, _, value in pairs}
    return options


def log_formats(root: Directive) -> dict[str, str]:
    """Every log_format by name, its parts joined."""
    return {d.args[0]: "".join(d.args[1:]) for d in root.walk() if d.name == "log_format" and d.args}


def access_logs(root: Directive) -> list[tuple[str, str]]:
    """(path, format) of every access_log (format "combined" when none is named)."""
    found = []
    for d in root.walk():
        if d.name == "access_log" and d.args and d.args[0] != "off":
            found.append((d.args[0], d.args[1] if len(d.args) > 1 else "combined"))
    return found


def proxied_upstreams(server: Directive) -> set[str]:
    """Names after `proxy_pass http(s)://` anywhere in a server block."""
    names = set()
    for d in server.walk():
        if d.name == "proxy_pass" and d.args:
            names.add(re.sub(r"^https?://", "", d.args[0]).split("/")[0])
    return names


def directive_values(block: Directive, name: str) -> list[list[str]]:
    """Arguments of every `name` directive in a block or below it."""
    return [d.args for d in block.walk() if d.name == name]


def balancing_site(root: Directive, port: int) -> tuple[Directive, Directive] | None:
    """(server block listening on `port`, the upstream it passes requests to), or None when there is none."""
    groups = upstreams(root)
    for server in servers(root):
        if listens_on(server, port):
            for name in sorted(proxied_upstreams(server) & set(groups)):
                return server, groups[name]
    return None


def upstream_hosts(upstream: Directive) -> set[str]:
    """The host part of every server line of an upstream (`10.0.0.1:80` -> `10.0.0.1`)."""
    return {address.rsplit(":", 1)[0] if address.count(":") == 1 else address for address in server_options(upstream)}


def path_to(root: Directive, target: Directive) -> list[Directive]:
    """The blocks from `root` down to `target`'s parent ([] when `target` is not below `root`)."""
    for child in root.children:
        if child is target:
            return [root]
        below = path_to(child, target)
        if below:
            return [root, *below]
    return []


def effective(root: Directive, block: Directive, name: str) -> list[str] | None:
    """Arguments of `name` as nginx applies them in `block`: its own, else the nearest enclosing block's.

    Inheritance, not a search: a `proxy_next_upstream` in another location does not count here."""
    for scope in [block, *reversed(path_to(root, block))]:
        found = scope.find(name)
        if found:
            return found[-1].args
    return None


def proxying_locations(server: Directive, upstream: str) -> list[Directive]:
    """The locations (or the server itself) whose proxy_pass sends requests to `upstream`."""
    found = []
    for block in [server, *server.walk()]:
        passes = block.find("proxy_pass") if block.is_block else []
        if any(re.sub(r"^https?://", "", d.args[0]).split("/")[0] == upstream for d in passes if d.args):
            found.append(block)
    return found


def seconds(value: str) -> float | None:
    """An nginx time (`10`, `10s`, `1m`, `500ms`, `1m30s`) in seconds, or None when it is not one."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwMy]?)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(int(n) * units[u or "s"] for n, u in parts)
