"""Process checks read from ``/proc`` (Linux): is a pid alive, who are our children.

Shared by the stress runner, the test kit's state machine and the test suite's
leak checks, so "alive" means the same thing everywhere: the pid exists and is
not a zombie.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (False where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def child_pids() -> set[int]:
    """This process's direct children, zombies included."""
    me = os.getpid()
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return found
