"""Named build steps with elapsed time; command output goes to a log file, not the terminal."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rich.console import Console

from lab_tasks.errors import LabError

STEP_MARKER = "opslab-step: "


class BuildSteps:
    """Prints `[ 0:42] step` lines; on a terminal a spinner shows the command's latest output line."""

    def __init__(self, log: Path, console: Console | None = None):
        self.log = log
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.started = time.monotonic()
        self.current = ""

    def elapsed(self) -> str:
        """Time since the start as m:ss."""
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"{minutes:2d}:{seconds:02d}"

    def step(self, name: str) -> None:
        """Announce the next step."""
        self.current = name
        self.console.print(f"[{self.elapsed()}] {name}")

    def run(self, argv: list[str], step: str | None = None) -> None:
        """Run argv, logging its output; a `opslab-step: X` line in it starts step X."""
        if step:
            self.step(step)
        with self.log.open("a") as log, self.console.status(self.current) as status:
            log.write(f"$ {' '.join(map(str, argv))}\n")
            log.flush()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                log.write(line)
                self._follow(line.rstrip(), status)
            if proc.wait() != 0:
                raise LabError(f"image build step '{self.current}' failed; see {self.log}")

    def _follow(self, line: str, status) -> None:
        """Turn step markers into steps; show other lines beside the spinner."""
        if line.startswith(STEP_MARKER):
            self.step(line.removeprefix(STEP_MARKER))
        elif line:
            status.update(f"{self.current} [{self.elapsed()}] {line[:70]}")
