"""Leak probes used by the autouse fixture: child processes and open fds."""

from __future__ import annotations

import gc
import os
import time


def child_pids(settle: float = 1.0) -> set[int]:
    """Children of this process (any state, zombies included).

    A process the library has already waited for may take a moment to vanish
    from /proc; we re-read for up to ``settle`` seconds before reporting.
    """
    deadline = time.monotonic() + settle
    while True:
        found = _read_children()
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def _read_children() -> set[int]:
    me = os.getpid()
    children: set[int] = set()
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                children.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return children


def open_fds(collect: bool = True) -> set[int]:
    if collect:
        gc.collect()
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
