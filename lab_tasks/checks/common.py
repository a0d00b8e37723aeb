"""Probes every stage's checks share: run a read-only command, read a file."""
from __future__ import annotations

import shlex


def run(host, *argv: str):
    """Run a read-only command on `host`, each argument shell-quoted, in the C locale (stable output)."""
    return host.run("LC_ALL=C " + " ".join(shlex.quote(str(arg)) for arg in argv))


def read(host, path: str) -> str | None:
    """A regular file's text, or None when the path is missing or not a regular file."""
    file = host.file(path)
    return file.content_string if file.exists and file.is_file else None
