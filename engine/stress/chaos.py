"""Chaos for the stress runner: the deaths we cause, and the deaths the pool sees.

Every worker death during a stress run must be explained. The runner *claims*
a worker's pid before it harms it (a SIGKILL from the killer task, or a fault
call: ``crash``, ``hang`` past its timeout, ``garbage`` on the frame channel);
the first claim wins, so one death is never counted twice even when a kill and
a fault call race for the same worker. :class:`WorkerWatch` listens to the
pool's telemetry and records which pid each slot ran and how it ended, and how
each drain of a call given up mid-call ended (``engine.worker.drained``): a
worker killed because it did not give its request back within
``cancel_grace`` is the pool's own doing, counted apart (a ``hang`` call's
worker dies that way too, and is counted as the hang). At the end both
ledgers are compared pid by pid.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine import telemetry
from engine.process.procfs import pid_alive

if TYPE_CHECKING:
    from engine.pool.pool import Pool

#: What the pool should report for each kind of injected death.
EXPECTED_EXIT = {"kill": "killed", "crash": "crashed", "hang": "replaced",
                 "garbage": "replaced"}
INJECTION_KINDS = tuple(EXPECTED_EXIT)
#: Exit code the stress runner's ``crash`` calls use, to recognise them.
CRASH_CODE = 13


@attrs.define
class Injection:
    """A death we caused. ``at`` is when it was caused (trio clock): the SIGKILL,
    or the end of the fault call that broke the worker."""

    pid: int
    kind: str
    slot: int | None
    worker_id: str | None
    at: float


@attrs.define
class Drain:
    """How the drain of a call given up mid-call ended (``engine.worker.drained``)."""

    pid: int | None
    worker_id: str | None
    outcome: str  # "clean" or "killed"
    reason: str
    duration: float
    at: float

    @property
    def grace_expired(self) -> bool:
        return self.outcome == "killed" and "cancel_grace" in self.reason


@attrs.define
class WorkerExit:
    """A worker exit as the pool reported it (telemetry ``engine.worker.exit``)."""

    pid: int | None
    slot: int
    worker_id: str | None
    reason: str
    at: float
    during_shutdown: bool

    @property
    def cause(self) -> str:
        return classify_exit(self.reason, self.during_shutdown)


def classify_exit(reason: str, during_shutdown: bool = False) -> str:
    """Map the supervisor's exit reason to: killed, crashed, replaced, start_failure,
    shutdown."""
    if reason.startswith("crashed:"):
        if f"signal {int(signal.SIGKILL)}" in reason:
            return "killed"
        return "crashed"
    if reason.startswith("start"):
        return "start_failure"
    if during_shutdown or "closing" in reason:
        return "shutdown"
    return "replaced"


class DeathLedger:
    """Who harmed which worker, first claim wins."""

    def __init__(self) -> None:
        self.injections: dict[int, Injection] = {}
        self.kills_attempted = 0
        self.kills_skipped = 0  # no eligible worker at that tick

    def claim(self, pid: int | None, kind: str, *, slot: int | None, worker_id: str | None,
              at: float) -> bool:
        """Record that ``kind`` is about to kill ``pid``; False if already doomed."""
        if pid is None or pid in self.injections:
            return False
        self.injections[pid] = Injection(pid, kind, slot, worker_id, at)
        return True

    def doomed(self, pid: int | None) -> bool:
        return pid is not None and pid in self.injections

    def mark_time(self, pid: int | None, kind: str, at: float) -> None:
        """A fault call ended: that is when the pool learnt of the death it caused."""
        injection = self.injections.get(pid) if pid is not None else None
        if injection is not None and injection.kind == kind:
            injection.at = at

    def by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(INJECTION_KINDS, 0)
        for injection in self.injections.values():
            counts[injection.kind] += 1
        return counts


class WorkerWatch:
    """Telemetry handler for one pool: ready and exit events, by slot and pid.

    The exit event names the slot; the pid is taken from the event when the pool
    includes it, otherwise from the slot's last ready event (a slot runs one
    worker at a time, so the two always pair up).
    """

    def __init__(self, remote_slots: frozenset[int] = frozenset()) -> None:
        self.pool_label: str | None = None
        # Slots whose workers run on another host (a remote launcher): their
        # pids are that host's, so /proc here says nothing about them.
        self.remote_slots = remote_slots
        self.remote_pids: set[int] = set()
        self.ready: list[tuple[float, int, str | None, int | None]] = []
        self.exits: list[WorkerExit] = []
        self.pids_seen: set[int] = set()
        self.pid_of_worker: dict[str, int] = {}
        self.shutdown_started: float | None = None
        self.drains: list[Drain] = []
        self._slot_worker: dict[int, tuple[str | None, int | None]] = {}

    def handle(self, event: tuple[str, ...], measurements: Mapping[str, float],
               metadata: Mapping[str, Any]) -> None:
        pool = metadata.get("pool")
        if pool is not None and self.pool_label is not None and pool != self.pool_label:
            return
        if event == telemetry.WORKER_READY:
            self._on_ready(metadata)
        elif event == telemetry.WORKER_EXIT:
            self._on_exit(metadata)
        elif event == telemetry.WORKER_DRAINED:
            pid = metadata.get("pid")
            self.drains.append(Drain(
                pid=pid if isinstance(pid, int) else None, worker_id=metadata.get("worker_id"),
                outcome=str(metadata.get("outcome")), reason=str(metadata.get("reason", "")),
                duration=float(measurements.get("duration", 0.0)), at=trio.current_time()))

    def grace_kills(self) -> set[int]:
        """Pids the pool killed because a request was not given back in time."""
        return {d.pid for d in self.drains if d.grace_expired and d.pid is not None}

    def _on_ready(self, metadata: Mapping[str, Any]) -> None:
        slot = metadata.get("slot")
        if not isinstance(slot, int):
            return
        worker_id = metadata.get("worker_id")
        pid = metadata.get("pid")
        pid = pid if isinstance(pid, int) else None
        now = trio.current_time()
        self.ready.append((now, slot, worker_id, pid))
        self._slot_worker[slot] = (worker_id, pid)
        if pid is not None:
            self.pids_seen.add(pid)
            if slot in self.remote_slots:
                self.remote_pids.add(pid)
            if isinstance(worker_id, str):
                self.pid_of_worker[worker_id] = pid

    def _on_exit(self, metadata: Mapping[str, Any]) -> None:
        slot = metadata.get("slot")
        if not isinstance(slot, int):
            return
        worker_id, pid = self._slot_worker.pop(slot, (None, None))
        given = metadata.get("pid")
        if isinstance(given, int):
            pid = given
        reason = str(metadata.get("reason", ""))
        if reason.startswith("start"):
            pid = None  # this exit ended a start, not the slot's previous worker
        self.exits.append(WorkerExit(
            pid=pid, slot=slot, worker_id=metadata.get("worker_id", worker_id), reason=reason,
            at=trio.current_time(), during_shutdown=self.shutdown_started is not None))

    def next_ready(self, slot: int | None, after: float) -> float | None:
        """When ``slot`` next reported a ready worker after ``after`` (None: never)."""
        if slot is None:
            return None
        for at, ready_slot, _worker, _pid in self.ready:
            if ready_slot == slot and at > after:
                return at
        return None

    def deaths(self) -> dict[int, WorkerExit]:
        """Exits of running workers before shutdown, by pid."""
        return {e.pid: e for e in self.exits
                if e.pid is not None and e.cause in ("killed", "crashed", "replaced")}


def kill_random_worker(pool: Pool, ledger: DeathLedger, rng: random.Random) -> Injection | None:
    """SIGKILL one READY, BUSY or DRAINING worker nobody has doomed yet; None if none is
    eligible.

    Starting and stopping workers are left alone: their death would be the
    pool's own doing or a start failure, not a crash to detect. The signal
    goes to the slot's ``local_pid``: the worker itself when it runs here, its
    local launcher (ssh) when it runs on another host, whose pid means nothing
    here. The ledger still names the death by the worker's pid, as the pool's
    telemetry does.
    """
    ledger.kills_attempted += 1
    eligible = [w for w in pool.inspect().slots
                if w.state.value in ("ready", "busy", "draining") and w.pid is not None
                and w.local_pid is not None and not ledger.doomed(w.pid)
                and pid_alive(w.local_pid)]
    if not eligible:
        ledger.kills_skipped += 1
        return None
    victim = rng.choice(eligible)
    assert victim.pid is not None and victim.local_pid is not None
    now = trio.current_time()
    ledger.claim(victim.pid, "kill", slot=victim.index, worker_id=victim.worker_id, at=now)
    if victim.worker_id is not None:
        pool.expect_death(victim.worker_id)  # counted in the summary, not logged per kill
    try:
        os.kill(victim.local_pid, signal.SIGKILL)
    except ProcessLookupError:  # pragma: no cover - it died in the last microsecond
        del ledger.injections[victim.pid]
        ledger.kills_skipped += 1
        return None
    return ledger.injections[victim.pid]


async def run_killer(pool: Pool, ledger: DeathLedger, every: float, rng: random.Random,
                     stop: trio.Event) -> None:
    """Kill a random worker every ``every`` seconds until ``stop`` is set.

    The schedule is fixed (t0 + k * every), so a slow tick does not stretch it.
    """
    next_at = trio.current_time() + every
    while True:
        with trio.move_on_at(next_at):
            await stop.wait()
        if stop.is_set():
            return
        next_at += every
        kill_random_worker(pool, ledger, rng)


async def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Poll /proc until none of ``pids`` is alive; return those still alive.

    Polling an OS condition with a deadline: nothing else tells us when the
    kernel has finished tearing a process down.
    """
    with trio.move_on_after(timeout):
        while any(pid_alive(p) for p in pids):  # noqa: ASYNC110 - an OS condition
            await trio.sleep(0.02)
    return {p for p in pids if pid_alive(p)}
