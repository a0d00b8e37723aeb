"""The real server, except that its engine loop crashes once a request with seed CRASH_SEED is waiting.

Tests only (`python tests/server/crashing_server.py --engine DIR ...`): it stands in for a bug or an
out-of-memory error outside any one request's work, which no per-request isolation can catch.
"""
import sys

from inference.scheduler import Scheduler
from inference.server.__main__ import main

CRASH_SEED = 424242
schedule = Scheduler.schedule


def crashing_schedule(self):
    if any(seq.params.seed == CRASH_SEED for seq in self.waiting):
        raise RuntimeError("injected engine loop crash")
    return schedule(self)


if __name__ == "__main__":
    Scheduler.schedule = crashing_schedule
    sys.exit(main(sys.argv[1:]))
