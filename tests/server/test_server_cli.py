"""The server's command line: bad flags are one `Error: ...; ...` line with exit 2; no dependency on lab_tasks."""
from __future__ import annotations

import subprocess
import sys

import pytest

from inference.server.__main__ import DEFAULT_PORT, main
from live_server import ROOT


@pytest.mark.parametrize("argv", [
    ["--engine", "x", "--max-queue", "0"],
    ["--engine", "x", "--port", "70000"],
    ["--engine", "x", "--stall-timeout", "0"],
    ["--engine", "x", "--engine-arg", "max_num_seqs"],
    ["--engine", "x", "--engine-arg", "no_such_option=1"],
    ["--engine", "x", "--log-level", "loud"],
    [],
])
def test_bad_flags_are_one_error_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and "; " in err


def test_help_lists_every_flag(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--engine", "--host", "--port", "--api-key", "--max-queue", "--served-model-name", "--drain-timeout",
                 "--stall-timeout", "--engine-arg", "--access-log", "--log-level"):
        assert flag in out
    assert f"default: {DEFAULT_PORT}" in out


def test_the_server_does_not_import_lab_tasks():
    code = ("import sys, inference.server.__main__, inference.server.app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lab_tasks'))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
