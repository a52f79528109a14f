"""Leak probes used by the autouse fixture: child processes and open fds."""

from __future__ import annotations

import gc
import os
import time

from engine.process.procfs import child_pids as read_children
from engine.process.procfs import pid_alive

__all__ = ["SESSION_CHILDREN", "child_pids", "open_fds", "pid_alive"]

# Children started on purpose for the whole session (the remote tests' sshd):
# the leak check neither reports nor waits for them. Their fixture stops and
# waits for them at the end of the session.
SESSION_CHILDREN: set[int] = set()


def child_pids(settle: float = 1.0) -> set[int]:
    """Children of this process (any state, zombies included).

    A process the library has already waited for may take a moment to vanish
    from /proc; we re-read for up to ``settle`` seconds before reporting.
    """
    deadline = time.monotonic() + settle
    while True:
        found = read_children() - SESSION_CHILDREN
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def open_fds(collect: bool = True) -> set[int]:
    if collect:
        gc.collect()
    return {int(fd) for fd in os.listdir("/proc/self/fd")}
