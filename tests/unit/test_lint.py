"""`make lint` in CI: yamllint (.yamllint) and ansible-lint (.ansible-lint, production profile) stay clean.

The same two commands as the Makefile's `lint` target, so a role that breaks the house style fails `make test`
and not only a `make lint` nobody ran.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LINTED = ["roles/", "playbooks/", "site.yml"]


def tool(name: str) -> str:
    """The venv's copy of a linter; CI fails when it is missing, elsewhere the test skips with the reason."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed (run `make install`)")
    pytest.skip(f"{name} is not installed (run `make install`)")


def run(*argv: str) -> subprocess.CompletedProcess:
    """The linter as `make lint` runs it: ANSIBLE_* settings other tests put in this process stay out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_yamllint_strict_is_clean():
    done = run(tool("yamllint"), "--strict", *LINTED, ".ansible-lint", ".yamllint")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ansible_lint_production_profile_is_clean():
    done = run(tool("ansible-lint"), *LINTED)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "production" in output, f"ansible-lint did not report the production profile:\n{output[-2000:]}"
