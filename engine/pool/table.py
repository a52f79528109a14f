"""The shell's worker table: per slot, the live worker handle and its supervisor.

The sans-IO core keeps the bookkeeping of each slot (a
:class:`~engine.pool.core.Slot`: state, lease, sessions, counters); this table
keeps what only the Trio shell has: the :class:`WorkerHandle` the slot's worker
runs behind (None while starting or stopped) and the slot task that starts and
stops it. One row per slot, same index as the core's slot.

Only the slot's supervisor writes ``row.worker`` (when the worker is ready and
when it is gone); the checkout path, health checks and introspection read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from engine.process.handle import WorkerHandle


class SlotControl(Protocol):
    """What the shell asks of a slot's supervisor."""

    async def run(self) -> None:
        """The slot task (runs until the pool's background tasks are cancelled)."""
        ...

    def request_start(self) -> None: ...

    def request_stop(self, reason: str, graceful: bool) -> None: ...

    def expect_kill(self) -> None:
        """The pool will kill the worker on purpose: record a stop, not a crash."""
        ...


class WorkerRow:
    """One slot as the shell sees it: its worker handle and its supervisor."""

    __slots__ = ("index", "supervisor", "worker")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: WorkerHandle | None = None
        self.supervisor: SlotControl  # set by WorkerTable once the row exists


class WorkerTable:
    """The rows, indexed like the core's slots."""

    __slots__ = ("rows",)

    def __init__(self, size: int, supervisor: Callable[[WorkerRow], SlotControl]) -> None:
        rows = tuple(WorkerRow(i) for i in range(size))
        for row in rows:
            row.supervisor = supervisor(row)
        self.rows = rows

    def __getitem__(self, index: int) -> WorkerRow:
        return self.rows[index]

    def __iter__(self) -> Iterator[WorkerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def worker(self, index: int) -> WorkerHandle | None:
        return self.rows[index].worker

    def os_pids(self) -> list[int]:
        """OS pids of the workers present (a fake's ``os_pid`` if it has one)."""
        pids = []
        for row in self.rows:
            worker = row.worker
            if worker is not None:
                pid = getattr(worker, "os_pid", worker.pid)
                if pid is not None:
                    pids.append(pid)
        return pids
