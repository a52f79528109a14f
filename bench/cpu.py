"""CPU accounting from ``/proc`` (Linux): this process, its workers, its descendants.

The parent's CPU is ``time.process_time()`` (every thread of this process, in
nanoseconds). A worker's CPU is the sum over its live threads of
``/proc/<pid>/task/<tid>/schedstat``'s first field (time on a CPU, in
nanoseconds). ``/proc/<pid>/stat``'s ``utime + stime`` would do too, but it
counts in clock ticks (10 ms here), coarser than a whole round of calls; it is
the fallback where ``schedstat`` is missing. Only live processes can be read:
a worker that exits during a window takes its CPU with it, so the bench reads
long-lived workers only. And a process that runs without ever entering the
scheduler (a pure spin loop: no sleep, no ``sched_yield``) has these counters
brought up to date only at scheduler ticks (4 ms here, as for
``clock_gettime`` on another process's CPU clock): such a process must report
its own CPU time (``probe``; the spin floor's child does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

Pids = Callable[[], Iterable[int]]
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def _schedstat_cpu(pid: int) -> float | None:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


def _stat_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields 14 and 15 of stat (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) * _TICK


_HAS_SCHEDSTAT = os.path.exists(f"/proc/{os.getpid()}/schedstat")


def process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by process ``pid``, or None if it is gone."""
    return _schedstat_cpu(pid) if _HAS_SCHEDSTAT else _stat_cpu(pid)


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def descendants(root: int | None = None) -> set[int]:
    """Every live descendant of ``root`` (default: this process): children,
    their children (a forkserver's workers), and so on."""
    out: set[int] = set()
    todo = [os.getpid() if root is None else root]
    while todo:
        for child in children(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` from ``/proc/<pid>/status``, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mem_available() -> int | None:
    """MemAvailable from ``/proc/meminfo``, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU spent from construction to :meth:`stop`: this process's, and that of
    ``pids`` (those alive at both ends; a pid that vanished counts nothing), or
    what ``probe`` (the workers' CPU so far, as they report it) says instead."""

    def __init__(self, pids: Iterable[int] = (),
                 probe: Callable[[], float] | None = None) -> None:
        self._probe = probe
        self._probed = probe() if probe is not None else 0.0
        self._workers = {} if probe is not None else {pid: process_cpu(pid) for pid in pids}
        self._parent = time.process_time()

    def stop(self) -> tuple[float, float]:
        """(parent CPU seconds, workers' CPU seconds) since construction."""
        parent = time.process_time() - self._parent
        if self._probe is not None:
            return parent, self._probe() - self._probed
        workers = 0.0
        for pid, before in self._workers.items():
            after = process_cpu(pid)
            if before is not None and after is not None:
                workers += after - before
        return parent, workers
