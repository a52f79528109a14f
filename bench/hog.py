"""CPU hogs: one plain busy-loop subprocess per core, for the contended rows.

:func:`cpu_hogs` starts them and always kills and waits for them when its block
ends, by error or Ctrl-C too. Should this process die without running that
(SIGKILL), each hog ends on its own: it asks the kernel for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``; the hogs are spawned from the main thread,
whose exit is the process's) and checks its parent pid between bursts of work
in case the parent died before that request. They ignore SIGINT, so a Ctrl-C at
the terminal reaches the bench (which kills them) instead of printing one
traceback per hog.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

HOG = r"""
import ctypes, os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(os.environ["BENCH_HOG_PARENT"])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


@contextmanager
def cpu_hogs(count: int | None = None) -> Iterator[list[int]]:
    """Run ``count`` (default: one per core) busy loops; yields their pids."""
    hogs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "BENCH_HOG_PARENT": str(os.getpid())}
    try:
        for _ in range(count or os.cpu_count() or 1):
            hogs.append(subprocess.Popen([sys.executable, "-c", HOG], env=env,
                                         stdin=subprocess.DEVNULL))
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
