"""A small parser for keepalived.conf: a tree of lines, each a name, its arguments and, for blocks, children."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Block:
    """A keepalived.conf line (name and arguments) and, for `name ... {`, the lines inside."""

    name: str
    args: list[str]
    children: list[Block] = field(default_factory=list)

    def find(self, name: str) -> list[Block]:
        """Direct children called `name`."""
        return [c for c in self.children if c.name == name]

    def first_arg(self, name: str) -> str:
        """First argument of the first child called `name`, or ''."""
        found = self.find(name)
        return found[0].args[0] if found and found[0].args else ""


def parse(text: str) -> Block:
    """keepalived.conf as a tree of lines; comments (# and !) dropped, braces may share a line."""
    root, stack = Block("root", []), []
    stack.append(root)
    spaced = re.sub(r"[#!][^\n]*", "", text).replace("{", " {\n").replace("}", "\n}\n")
    for line in spaced.splitlines():
        try:
            words = shlex.split(line, posix=True) if line.strip() else []
        except ValueError:  # an unbalanced quote: keepalived would reject the line too
            words = line.split()
        if not words:
            continue
        if words == ["}"]:
            if len(stack) > 1:
                stack.pop()
            continue
        block = Block(words[0], [w for w in words[1:] if w != "{"])
        stack[-1].children.append(block)
        if words[-1] == "{":
            stack.append(block)
    return root


def instances(root: Block) -> list[Block]:
    """Every vrrp_instance block."""
    return root.find("vrrp_instance")


def scripts(root: Block) -> dict[str, Block]:
    """Every vrrp_script block by name."""
    return {s.args[0]: s for s in root.find("vrrp_script") if s.args}


def tracked_scripts(instance: Block) -> dict[str, list[str]]:
    """{script name: its options in the instance's track_script list (e.g. ['weight', '-20'])}."""
    return {line.name: line.args for block in instance.find("track_script") for line in block.children}


def virtual_addresses(instance: Block) -> list[str]:
    """The addresses (without prefix length) of an instance's virtual_ipaddress block."""
    return [line.name.split("/")[0] for block in instance.find("virtual_ipaddress") for line in block.children]
