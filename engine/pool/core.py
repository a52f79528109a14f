"""The sans-IO pool core: slots, waiters and session bindings.

Every method is synchronous, does no I/O and never awaits; it updates state and
queues *actions* (start this slot, stop that worker, wake that waiter, emit this
event) that the Trio shell performs afterwards. Because it cannot block, two
events can never interleave inside it: the races of the hand-off are decided
here, one event at a time, and the property tests drive it directly.

Terms: a *slot* is a place for one worker; its *generation* counts the workers
it has run. A *waiter* is one checkout request. A lease token is the id of the
waiter that was granted the slot, so a stale lease can never release a worker
that has since been given to someone else.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from engine.errors import PoolClosed, PoolSaturated, PoolTimeout, SessionLost, WorkerBusy
from engine.pool.contract import Ok, Remove, Skip, Verdict
from engine.pool.lifecycle import Lifecycle, Transition, WorkerState
from engine.pool.lines import FreeSlots, WaiterLine
from engine.telemetry.events import (
    CONTRACT_VIOLATION,
    HEALTH_FAILED,
    SESSION_BIND,
    SESSION_LOST,
    WORKER_TRANSITION,
    Event,
)

S = WorkerState


# --- actions -------------------------------------------------------------------


@attrs.frozen
class StartWorker:
    slot: int
    generation: int


@attrs.frozen
class StopWorker:
    slot: int
    generation: int
    reason: str
    graceful: bool


@attrs.frozen
class Wake:
    waiter: int


@attrs.frozen
class Emit:
    event: tuple[str, ...]
    measurements: dict[str, float]
    metadata: dict[str, Any]


@attrs.frozen
class DrainWorker:
    """Read the abandoned request's reply back, then report :meth:`PoolCore.drained`."""

    slot: int
    generation: int


Action = StartWorker | StopWorker | Wake | Emit | DrainWorker


class WaiterStatus(enum.Enum):
    QUEUED = "queued"
    GRANTED = "granted"  # a slot is reserved for it, the caller has not taken it yet
    HELD = "held"  # the caller took the lease
    FAILED = "failed"
    DONE = "done"  # lease returned, or cancelled


@attrs.define(eq=False)
class Waiter:
    id: int
    session: str | None
    deadline: float | None
    enqueued_at: float
    purpose: str = "call"  # "call" or "health"
    target: int | None = None  # health probes ask for one specific slot
    status: WaiterStatus = WaiterStatus.QUEUED
    slot: int | None = None
    generation: int | None = None
    error: BaseException | None = None
    removals: Removals | None = None  # workers removed at hand-off instead of granted
    # Where it waits (a WaiterLine) and its entry there; see engine.pool.lines.
    line: WaiterLine | None = attrs.field(default=None, repr=False)
    entry: int = attrs.field(default=0, repr=False)


@attrs.define(eq=False)
class Removals:
    """Workers removed at hand-off (Remove) while they were offered to one
    waiter: its PoolTimeout says so."""

    total: int = 0
    by_policy: int = 0
    last: str = ""


@attrs.define(eq=False)
class Slot:
    index: int
    lifecycle: Lifecycle
    generation: int = 0
    worker_id: str | None = None
    pid: int | None = None
    lease: int | None = None
    sessions: set[str] = attrs.Factory(set)
    last_used: float = 0.0
    ready_at: float = 0.0
    calls: int = 0
    leases_granted: int = 0  # since this worker became ready (health probes excluded)
    wanted: bool = False
    health_failures: int = 0
    retire_reason: str | None = None  # retire() asked while the worker was leased
    free_token: int = 0  # nonzero while READY and unleased (see engine.pool.lines.FreeSlots)

    @property
    def state(self) -> WorkerState:
        return self.lifecycle.state


@attrs.define(eq=False)
class Binding:
    slot: int
    generation: int
    worker_id: str | None
    last_used: float
    lost: str | None = None  # why the state is gone, until the next use reports it


@attrs.frozen
class CoreCounts:
    """The core's counts (O(1) to take); the pool's statistics extend them."""

    size: int
    ready: int
    busy: int
    starting: int
    degraded: int
    stopping: int
    stopped: int
    waiting: int
    sessions: int
    restarts: int
    crashes: int
    start_failures: int
    leased: int
    draining: int  # workers giving an abandoned request back (not leased, not ready)


VetFunction = Callable[[Slot, Waiter], Verdict]


def _always_ok(slot: Slot, waiter: Waiter) -> Verdict:
    return Verdict(Ok())


class PoolCore:
    def __init__(
        self, size: int, *, clock: Callable[[], float], affinity: str = "strict",
        max_waiters: int = 1000, lazy: bool = False, max_calls_per_worker: int | None = None,
        max_health_failures: int = 3, vet: VetFunction = _always_ok, strict: bool = False,
        name: str | None = None, telemetry_enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        # Building event payloads costs more than the bookkeeping itself; skip it
        # when nobody listens.
        self.telemetry_enabled = telemetry_enabled
        self.size = size
        self.clock = clock
        self.affinity = affinity
        self.max_waiters = max_waiters
        self.lazy = lazy
        self.max_calls_per_worker = max_calls_per_worker
        self.max_health_failures = max_health_failures
        self.vet = vet
        self.name = name
        self.slots = [
            Slot(i, Lifecycle(f"slot {i}", clock=clock, strict=strict)) for i in range(size)
        ]
        # Kept up to date by _move, so the shell can read counts in O(1).
        self.state_counts: dict[WorkerState, int] = {state: 0 for state in S}
        self.state_counts[S.STOPPED] = size
        self.waiters: dict[int, Waiter] = {}
        #: Every queued waiter by id (not in arrival order: see queued_in_order()).
        self.queue: dict[int, Waiter] = {}
        self.bindings: dict[str, Binding] = {}
        # The waiting line, split by what a waiter may take, each part in
        # arrival order: `_any` (anonymous waiters and sessions with no worker
        # of their own: any free worker), `_bound[slot]` (sessions bound to that
        # slot, strict or fail_fast affinity). A freed worker only looks at the
        # heads of `_any` and of its own `_bound` line.
        self._any = WaiterLine()
        self._bound: dict[int, WaiterLine] = {}
        self._by_session: dict[str, dict[int, Waiter]] = {}  # session -> its queued waiters
        self._queued_calls = 0  # queued call waiters: the unmet demand
        self._free = FreeSlots(self.slots)
        # Free slots whose _bound line may hold waiters: at rest (after a
        # dispatch) none, so a dispatch looks at the few freed since.
        self._offers: set[int] = set()
        self._leased = 0
        self._wanted_stopped = 0  # wanted slots still STOPPED: workers on their way
        self._unwanted: list[int] = []  # heap of slots to start on demand (lazy deletion)
        self._unwanted_at: set[int] = set()  # slots currently in that heap
        self.closing = False
        self.restarts = 0
        self.crashes = 0  # workers that died on their own after their hello
        self.start_failures = 0
        self._ids = itertools.count(1)
        for slot in self.slots:
            self._note_unwanted(slot)
        #: Pending actions, oldest first (the shell takes them with take_actions();
        #: a plain list so that "anything to do?" costs no call).
        self.actions: list[Action] = []

    # --- plumbing --------------------------------------------------------------

    def has_actions(self) -> bool:
        return bool(self.actions)

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def _emit(self, event: Event, *, measurements: dict[str, float] | None = None,
              **metadata: Any) -> None:
        if not self.telemetry_enabled():
            return
        self.actions.append(Emit(event, measurements or {}, metadata))

    def _move(self, slot: Slot, new: WorkerState, reason: str,
              now: float | None = None) -> None:
        old = slot.lifecycle.state
        transition = slot.lifecycle.move(new, reason, now)
        if old is not slot.lifecycle.state:
            self.state_counts[old] -= 1
            self.state_counts[new] += 1
            if slot.wanted:
                self._wanted_stopped += (new is S.STOPPED) - (old is S.STOPPED)
            elif new is S.STOPPED:
                self._note_unwanted(slot)
        self._sync_free(slot)
        if transition is not None and self.telemetry_enabled():
            self._emit_transition(slot, transition)

    def _emit_transition(self, slot: Slot, t: Transition) -> None:
        self._emit(WORKER_TRANSITION, measurements={"duration": t.duration},
                   slot=slot.index, worker_id=slot.worker_id, old=t.old.value,
                   new=t.new.value, reason=t.reason)

    # --- start-up ----------------------------------------------------------------

    def start(self) -> None:
        """Eager pools start every slot at once; lazy ones wait for demand."""
        if not self.lazy:
            for slot in self.slots:
                self._want(slot)

    def _want(self, slot: Slot) -> None:
        self._set_wanted(slot, True)
        if slot.state is S.STOPPED and not self.closing:
            self.actions.append(StartWorker(slot.index, slot.generation + 1))

    # --- worker events (from slot tasks) -----------------------------------------

    def worker_starting(self, index: int) -> int:
        slot = self.slots[index]
        slot.generation += 1
        slot.retire_reason = None
        if slot.generation > 1:
            self.restarts += 1
        self._move(slot, S.STARTING, "spawn")
        return slot.generation

    def worker_ready(self, index: int, worker_id: str, pid: int | None) -> None:
        slot = self.slots[index]
        slot.worker_id = worker_id
        slot.pid = pid
        slot.calls = 0
        slot.leases_granted = 0
        slot.health_failures = 0
        slot.ready_at = slot.last_used = self.clock()
        if slot.state is S.STOPPING:
            return  # stopped while starting (e.g. the pool is closing): never served
        self._move(slot, S.READY, "hello received")
        if self.closing:
            self._stop(slot, "pool closing", graceful=True)
        self._dispatch()

    def worker_exited(self, index: int, reason: str, *, restart: bool = True,
                      crashed: bool = False, start_failed: bool = False) -> None:
        """The slot's worker is gone (a stop; ``crashed``: it died on its own;
        ``start_failed``: it never sent a usable hello)."""
        slot = self.slots[index]
        self.crashes += crashed
        self.start_failures += start_failed
        self._move(slot, S.STOPPED, reason)
        if slot.lease is not None:
            lease = self.waiters.get(slot.lease)
            self._set_lease(slot, None)
            if lease is not None and lease.status is WaiterStatus.GRANTED:
                # Granted but not yet taken: the waiter goes back to the queue
                # rather than being handed a dead worker (or, if the pool is
                # closing, learns that at once).
                if self.closing:
                    lease.slot = lease.generation = None
                    self._fail(lease, PoolClosed(pool=self.name))
                else:
                    self._requeue(lease)
        self._lose_sessions(slot, reason)
        slot.worker_id = None
        slot.pid = None
        if self.closing or not restart:
            self._set_wanted(slot, False)
        if slot.wanted and not self.closing:
            self.actions.append(StartWorker(slot.index, slot.generation + 1))
        self._ensure_capacity()
        self._dispatch()

    def _lose_sessions(self, slot: Slot, reason: str) -> None:
        heads: list[Waiter] = []
        for session in slot.sessions:
            binding = self.bindings.get(session)
            if binding is not None and binding.slot == slot.index:
                binding.lost = reason
                self._emit(SESSION_LOST, session=session, slot=slot.index, reason=reason)
                queued = self._by_session.get(session)
                if queued:
                    heads.append(queued[min(queued)])
        slot.sessions.clear()
        # The session's earliest queued waiter is its "next call": it learns
        # that the state is gone. Its later waiters start afresh, on any worker.
        for waiter in sorted(heads, key=lambda w: w.id):
            assert waiter.session is not None
            binding = self.bindings[waiter.session]
            self._fail(waiter, self._session_lost(waiter.session, binding))

    def _session_lost(self, session: str, binding: Binding) -> SessionLost:
        del self.bindings[session]
        self._reroute(session)
        return SessionLost(session=session, worker_id=binding.worker_id,
                           reason=binding.lost or "worker died")

    # --- checkout --------------------------------------------------------------

    def request(self, session: str | None = None, timeout: float | None = None, *,
                purpose: str = "call", target: int | None = None,
                now: float | None = None) -> Waiter:
        """Ask for a worker. The returned waiter may already be granted or failed.

        A waiter granted or failed here is not woken (no Wake action): its
        caller reads the status. Only a queued waiter is woken later.
        """
        if now is None:
            now = self.clock()
        waiter = Waiter(next(self._ids), session, None if timeout is None else now + timeout,
                        now, purpose, target)
        self.waiters[waiter.id] = waiter
        if self.closing or session is not None or purpose != "call" \
                or len(self.queue) >= self.max_waiters:
            error = self._refuse(waiter)
            if error is not None:
                waiter.status = WaiterStatus.FAILED
                waiter.error = error
                return waiter
        # Served at once if a worker is free: a free worker means nobody ahead
        # in the queue could take it (they wait for one specific busy worker).
        # Not queued yet, so a grant or failure here queues no Wake.
        self._try_serve(waiter, now)
        if waiter.status is WaiterStatus.QUEUED:
            self._enqueue(waiter)
            self._ensure_capacity()
        return waiter

    def _refuse(self, waiter: Waiter) -> BaseException | None:
        if self.closing:
            return PoolClosed(pool=self.name)
        if waiter.purpose == "call" and len(self.queue) >= self.max_waiters:
            return PoolSaturated(max_waiters=self.max_waiters, pool=self.name)
        if waiter.session is None:
            return None
        binding = self.bindings.get(waiter.session)
        if binding is None:
            return None
        if binding.lost is not None:
            return self._session_lost(waiter.session, binding)
        slot = self.slots[binding.slot]
        if self.affinity == "fail_fast" and (slot.state is not S.READY or slot.lease is not None):
            return WorkerBusy(session=waiter.session, worker_id=slot.worker_id, pid=slot.pid)
        return None

    def receive(self, waiter_id: int) -> bool:
        """The caller takes its granted lease. False if it is no longer valid."""
        waiter = self.waiters.get(waiter_id)
        if waiter is None or waiter.status is not WaiterStatus.GRANTED:
            return False
        waiter.status = WaiterStatus.HELD
        return True

    def reject_grant(self, waiter_id: int, reason: str) -> None:
        """The waiter found its granted worker dead at receipt: stop that worker
        and put the waiter back at the head of the queue."""
        waiter = self.waiters.get(waiter_id)
        if waiter is None or waiter.status is not WaiterStatus.GRANTED or waiter.slot is None:
            return
        slot = self.slots[waiter.slot]
        live = slot.lease == waiter.id and slot.generation == waiter.generation
        if live:
            self._set_lease(slot, None)
            self._stop(slot, reason, graceful=False)
        if self.closing:
            # As in worker_exited: a closed pool's queue takes nobody back.
            waiter.slot = waiter.generation = None
            self._fail(waiter, PoolClosed(pool=self.name))
            return
        binding = self.bindings.get(waiter.session) if waiter.session is not None else None
        if live and binding is not None and binding.lost is None \
                and binding.slot == slot.index and binding.generation == slot.generation:
            # The re-check at receipt is part of the hand-off: this waiter is the
            # first to see its session's worker dead, so it reports the loss now
            # (under "hint" it would otherwise run elsewhere as if the state were
            # there; under "strict" it would wait for the exit to hear it).
            assert waiter.session is not None
            binding.lost = f"died before the call was sent (found at hand-off: {reason})"
            self._emit(SESSION_LOST, session=waiter.session, slot=slot.index, reason=reason)
            waiter.slot = waiter.generation = None
            self._fail(waiter, self._session_lost(waiter.session, binding))
            self._dispatch()
            return
        self._requeue(waiter)
        self._dispatch()

    def cancel(self, waiter_id: int) -> None:
        """The caller gave up (cancelled or timed out) before taking its lease."""
        waiter = self.waiters.get(waiter_id)
        if waiter is None:
            return
        if waiter.status is WaiterStatus.QUEUED:
            self._unqueue(waiter)
            waiter.status = WaiterStatus.DONE
            self.waiters.pop(waiter.id, None)
        elif waiter.status is WaiterStatus.GRANTED:
            # Cancelled between grant and receipt: the worker goes back unharmed.
            self.checkin(waiter.id, clean=True)
        elif waiter.status is WaiterStatus.FAILED:
            self.waiters.pop(waiter.id, None)

    def fail_queued(self, error: Callable[[], BaseException]) -> None:
        """Fail every queued checkout (not health probes) with a new ``error()``
        each: the shell found that no worker can start (see
        ``FailureTracker.unstartable``), so waiting would only time out."""
        for waiter in self.queued_in_order():
            if waiter.purpose == "call":
                self._fail(waiter, error())

    def expire(self, waiter_id: int) -> None:
        """The waiter's deadline passed (the shell's timer fired)."""
        waiter = self.waiters.get(waiter_id)
        if waiter is not None and waiter.status is WaiterStatus.QUEUED:
            self._fail(waiter, PoolTimeout(
                timeout=(waiter.deadline or 0) - waiter.enqueued_at, session=waiter.session,
                pool=self.name, waiting=len(self.queue),
                reason=self._timeout_reason(waiter)))

    def _timeout_reason(self, waiter: Waiter) -> str:
        removals = waiter.removals
        if removals is not None:
            who = "the checkout policy" if removals.by_policy == removals.total \
                else "the hand-off check or the checkout policy"
            return (f"{who} removed every worker offered to this checkout ({removals.total} "
                    f"removed; the last: {removals.last})")
        if waiter.session is not None and waiter.session in self.bindings:
            return f"session worker busy, affinity={self.affinity}"
        counts = self.counts()
        return (f"{counts.busy} busy, {counts.starting} starting, "
                f"{counts.degraded} degraded of {self.size}")

    def checkin(self, waiter_id: int, *, clean: bool, remove: str | None = None,
                calls: int = 0, drain: bool = False) -> bool:
        """Return a lease. False if the token is stale (the worker is already gone).

        ``drain``: the lease's last call was abandoned in flight and the worker
        can give it back: DRAINING instead of a stop (see :meth:`drained`)."""
        waiter = self.waiters.pop(waiter_id, None)
        if waiter is None or waiter.slot is None:
            return False
        previous = waiter.status
        waiter.status = WaiterStatus.DONE
        slot = self.slots[waiter.slot]
        if slot.lease != waiter.id or slot.generation != waiter.generation:
            return False
        self._set_lease(slot, None)
        slot.calls += calls
        slot.last_used = now = self.clock()
        if waiter.session is not None and waiter.session in self.bindings:
            self.bindings[waiter.session].last_used = slot.last_used
        if slot.state is not S.BUSY:
            self._dispatch()
            return True
        if self.closing:
            self._move(slot, S.READY, "checked in")
            self._stop(slot, "pool closing", graceful=True)
        elif drain and remove is None:
            self._begin_drain(slot)
        elif not clean or remove is not None:
            self._move(slot, S.READY, "checked in")
            self._stop(slot, remove or "dirty after its lease", graceful=clean)
        elif slot.retire_reason is not None:
            self._move(slot, S.READY, "checked in")
            self._stop(slot, slot.retire_reason, graceful=True)
        elif self.max_calls_per_worker and slot.calls >= self.max_calls_per_worker:
            self._move(slot, S.READY, "checked in")
            self._stop(slot, f"recycled after {slot.calls} calls", graceful=True)
        else:
            self._move(slot, S.READY, "checked in" if previous is WaiterStatus.HELD
                       else "waiter cancelled before receipt", now)
        self._dispatch()
        return True

    # --- cooperative cancellation (DRAINING) ------------------------------------
    # A call cancelled or timed out with its request in flight: the worker is
    # not leased, not handed out, and keeps its sessions while the shell reads
    # the abandoned request's reply back (a DrainWorker action); drained()
    # then returns it to READY, or stops it (its grace ended, or it broke).

    def _begin_drain(self, slot: Slot) -> None:
        self._move(slot, S.DRAINING, "call abandoned in flight")
        self.actions.append(DrainWorker(slot.index, slot.generation))

    def drained(self, index: int, generation: int, ok: bool, reason: str) -> None:
        """The drain of ``index``'s worker ended: ``ok`` (clean again) or not
        (kill it: every session on it is lost). Stale reports are ignored."""
        slot = self.slots[index]
        if slot.generation != generation or slot.state is not S.DRAINING:
            return
        if not ok:
            self._stop(slot, reason, graceful=False)
        else:
            self._move(slot, S.READY, f"drained: {reason}")
            if self.closing:
                self._stop(slot, "pool closing", graceful=True)
            elif slot.retire_reason is not None:
                self._stop(slot, slot.retire_reason, graceful=True)
            elif self.max_calls_per_worker and slot.calls >= self.max_calls_per_worker:
                self._stop(slot, f"recycled after {slot.calls} calls", graceful=True)
        self._dispatch()

    # --- health ------------------------------------------------------------------

    def health_candidates(self, idle_for: float) -> list[int]:
        """Slots idle (READY or DEGRADED, unleased) for at least ``idle_for``."""
        now = self.clock()
        return [s.index for s in self.slots
                if s.state in (S.READY, S.DEGRADED) and s.lease is None
                and now - s.last_used >= idle_for]

    def health_result(self, waiter_id: int, ok: bool, reason: str = "", *,
                      unusable: bool = False) -> None:
        """A health probe ended. ``unusable``: it left the worker unable to answer
        again (a dirty channel): replace it now, whatever the failure count."""
        waiter = self.waiters.pop(waiter_id, None)
        if waiter is None or waiter.slot is None:
            return
        slot = self.slots[waiter.slot]
        if slot.lease != waiter.id or slot.generation != waiter.generation:
            return
        self._set_lease(slot, None)
        waiter.status = WaiterStatus.DONE
        if ok:
            slot.health_failures = 0
            self._move(slot, S.READY, "health check passed")
        else:
            slot.health_failures += 1
            self._emit(HEALTH_FAILED, slot=slot.index, worker_id=slot.worker_id,
                       failures=slot.health_failures, reason=reason)
            self._move(slot, S.DEGRADED, f"health check failed: {reason}")
            if unusable:
                self._stop(slot, "its channel can't be used again after a failed health check",
                           graceful=False)
            elif slot.health_failures >= self.max_health_failures:
                self._stop(slot, f"{slot.health_failures} health checks failed in a row",
                           graceful=False)
        if slot.retire_reason is not None:
            self._stop(slot, slot.retire_reason, graceful=True)
        self._dispatch()

    # --- sessions ----------------------------------------------------------------

    def unbind(self, session: str) -> int | None:
        """Forget a session; returns the slot that held its state, if still alive."""
        binding = self.bindings.pop(session, None)
        if binding is None:
            return None
        slot = self.slots[binding.slot]
        slot.sessions.discard(session)
        if slot.free_token:
            self._free.add(slot)  # it holds one session fewer: re-sort it
        # A strict waiter queued for that worker may now take any worker.
        self._reroute(session)
        self._dispatch()
        if binding.lost is None and slot.generation == binding.generation:
            return slot.index
        return None

    def expired_sessions(self, ttl: float) -> list[str]:
        now = self.clock()
        return [s for s, b in self.bindings.items()
                if b.lost is None and now - b.last_used >= ttl
                and self.slots[b.slot].lease is None]

    # --- retirement and shutdown -------------------------------------------------

    def retire(self, index: int, reason: str, *, graceful: bool = True) -> None:
        """Stop a slot's worker (now if idle, after its lease otherwise)."""
        slot = self.slots[index]
        if slot.state in (S.READY, S.DEGRADED, S.STARTING):
            self._stop(slot, reason, graceful=graceful)
        elif slot.state in (S.BUSY, S.DRAINING):
            slot.retire_reason = reason

    def shrink(self, index: int, reason: str) -> None:
        """Idle retirement: stop the worker and do not restart until demand returns."""
        slot = self.slots[index]
        self._set_wanted(slot, False)
        self.retire(index, reason)

    def close(self) -> None:
        """Stop serving: every queued waiter gets PoolClosed; idle workers stop."""
        if self.closing:
            return
        self.closing = True
        for waiter in self.queued_in_order():
            self._fail(waiter, PoolClosed(pool=self.name))
        for slot in self.slots:
            self._set_wanted(slot, False)
            if slot.state in (S.READY, S.DEGRADED, S.STARTING):
                self._stop(slot, "pool closing", graceful=True)

    def _stop(self, slot: Slot, reason: str, *, graceful: bool) -> None:
        if slot.state in (S.STOPPING, S.STOPPED):
            return
        self._move(slot, S.STOPPING, reason)
        self.actions.append(StopWorker(slot.index, slot.generation, reason, graceful))

    # --- dispatch ----------------------------------------------------------------
    # Every step below is O(log n) in waiters, slots and sessions (amortised):
    # counts are kept as things change, and the heaps in engine.pool.lines give
    # the earliest waiter and the best free worker without a scan.

    def _ensure_capacity(self) -> None:
        """Lazy pools (and shrunk ones) start workers when waiters outnumber them."""
        if self.closing:
            return
        coming = self.state_counts[S.STARTING] + self._wanted_stopped
        while self._queued_calls > coming and self._unwanted:
            index = heapq.heappop(self._unwanted)
            self._unwanted_at.discard(index)
            slot = self.slots[index]
            if not slot.wanted and slot.state is S.STOPPED:
                self._want(slot)
                coming += 1

    def _note_unwanted(self, slot: Slot) -> None:
        """``slot`` may be unwanted and STOPPED: a candidate for _ensure_capacity."""
        if slot.index not in self._unwanted_at:
            self._unwanted_at.add(slot.index)
            heapq.heappush(self._unwanted, slot.index)

    def _set_wanted(self, slot: Slot, wanted: bool) -> None:
        if slot.wanted is wanted:
            return
        slot.wanted = wanted
        if slot.state is S.STOPPED:
            self._wanted_stopped += 1 if wanted else -1
            if not wanted:
                self._note_unwanted(slot)

    def _set_lease(self, slot: Slot, waiter_id: int | None) -> None:
        self._leased += (waiter_id is not None) - (slot.lease is not None)
        slot.lease = waiter_id
        self._sync_free(slot)

    def _sync_free(self, slot: Slot) -> None:
        """Keep FreeSlots in step with ``slot`` (READY and unleased = free)."""
        if slot.lifecycle.state is S.READY and slot.lease is None:
            if not slot.free_token:
                self._free.add(slot)
                line = self._bound.get(slot.index)
                if line is not None and line.live:
                    self._offers.add(slot.index)
        elif slot.free_token:
            self._free.remove(slot)

    # --- the waiting line ----------------------------------------------------------

    def _route(self, waiter: Waiter) -> int | None:
        """The only slot ``waiter`` may take (its session's worker), or None: any."""
        if waiter.session is not None and self.affinity != "hint":
            binding = self.bindings.get(waiter.session)
            if binding is not None and binding.lost is None:
                return binding.slot
        return None

    def _line_for(self, waiter: Waiter) -> WaiterLine:
        """The line ``waiter`` belongs to: its session's worker's, or the common one."""
        index = self._route(waiter)
        if index is None:
            return self._any
        line = self._bound.get(index)
        if line is None:
            line = self._bound[index] = WaiterLine()
        if self.slots[index].free_token:
            self._offers.add(index)
        return line

    def _enqueue(self, waiter: Waiter) -> None:
        self.queue[waiter.id] = waiter
        if waiter.purpose != "call":
            return  # a health probe asks for one slot now or never: it never waits
        self._queued_calls += 1
        self._line_for(waiter).push(waiter)
        if waiter.session is not None:
            self._by_session.setdefault(waiter.session, {})[waiter.id] = waiter

    def _unqueue(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out of the waiting line; False if it was not in it."""
        if self.queue.pop(waiter.id, None) is None:
            return False
        if waiter.line is not None:
            self._queued_calls -= 1
            waiter.line.discard(waiter)
            if waiter.session is not None:
                queued = self._by_session[waiter.session]
                del queued[waiter.id]
                if not queued:
                    del self._by_session[waiter.session]
        return True

    def _reroute(self, session: str) -> None:
        """The session's binding changed: move its queued waiters to their new line."""
        for waiter in self._by_session.get(session, {}).values():
            line = self._line_for(waiter)
            if waiter.line is not line:
                assert waiter.line is not None
                waiter.line.discard(waiter)
                line.push(waiter)

    def queued_in_order(self) -> list[Waiter]:
        """Every queued waiter, earliest arrival first (O(n log n): for views and
        for failing them all)."""
        return sorted(self.queue.values(), key=lambda w: w.id)

    def _next_servable(self) -> Waiter | None:
        """The earliest queued waiter that some free worker may serve now."""
        best: Waiter | None = self._any.head()
        for index in list(self._offers):
            line = self._bound.get(index)
            head = line.head() if line is not None and self.slots[index].free_token else None
            if head is None:
                self._offers.discard(index)
            elif best is None or head.id < best.id:
                best = head
        return best

    def _dispatch(self) -> None:
        """Serve queued waiters while a free worker can take one, earliest first.

        Each round serves or fails one waiter, or removes the worker it was
        offered (the hand-off check): a free worker is gone either way, or the
        waiter left, so this ends after touching only waiters served now."""
        if not self._queued_calls:
            self._offers.clear()
            return
        now = self.clock()
        while self._free.count:
            waiter = self._next_servable()
            if waiter is None:
                return
            free = self._free.count
            self._try_serve(waiter, now)
            if waiter.status is WaiterStatus.QUEUED and self._free.count == free:
                # No progress can't happen (see above); never spin if it did:
                # the state machine's "nobody waits beside an idle worker" says so.
                return  # pragma: no cover

    def _try_serve(self, waiter: Waiter, now: float) -> None:
        if waiter.deadline is not None and now >= waiter.deadline:
            self.expire(waiter.id)
            return
        if waiter.session is not None and waiter.purpose == "call":
            binding = self.bindings.get(waiter.session)
            if binding is not None and binding.lost is not None:
                # Its worker died while this waiter held another's grant (hint
                # affinity) that was then taken back: it is the session's next
                # call, so it hears of the loss rather than take the dead
                # worker's replacement (same slot index) as if the state were there.
                self._fail(waiter, self._session_lost(waiter.session, binding))
                return
        for slot in self._candidates(waiter):
            if waiter.purpose == "health":
                self._grant(waiter, slot, now)
                return
            verdict = self.vet(slot, waiter)
            if verdict.violation is not None:
                self._emit(CONTRACT_VIOLATION, callback=verdict.violation.callback,
                           value=repr(verdict.violation.value), slot=slot.index)
            decision = verdict.decision
            if type(decision) is Ok:
                self._grant(waiter, slot, now)
                return
            if isinstance(decision, Skip):
                self._fail(waiter, decision.exception)
                return
            if isinstance(decision, Remove):
                if waiter.removals is None:
                    waiter.removals = Removals()
                waiter.removals.total += 1
                waiter.removals.by_policy += verdict.by_policy
                waiter.removals.last = decision.reason
                self._stop(slot, decision.reason, graceful=False)
            if slot.free_token:  # pragma: no cover - a decision always takes the slot
                return

    def _candidates(self, waiter: Waiter) -> Iterator[Slot]:
        """The free workers ``waiter`` may take, best first, one at a time (the
        caller grants, fails or removes each before asking for the next)."""
        if waiter.purpose == "health":
            slot = self.slots[waiter.target] if waiter.target is not None else None
            if slot is not None and slot.lease is None and slot.state in (S.READY, S.DEGRADED):
                yield slot
            return
        binding = self.bindings.get(waiter.session) if waiter.session is not None else None
        if binding is not None:
            bound = self.slots[binding.slot]
            if bound.free_token:
                yield bound
            if self.affinity != "hint":
                return
        elif waiter.session is not None:
            # First use: the worker with the fewest sessions, warmest first.
            while (slot := self._free.fewest_sessions()) is not None:
                yield slot
            return
        # Anonymous (or hint affinity, its own worker busy): warmest first, to
        # keep caches hot.
        while (slot := self._free.warmest()) is not None:
            yield slot

    def _grant(self, waiter: Waiter, slot: Slot, now: float) -> None:
        # Only a queued waiter sleeps: it is woken. One served while asking
        # (inside request()) or re-granted while running reads its status.
        woken = self._unqueue(waiter)
        waiter.status = WaiterStatus.GRANTED
        waiter.slot = slot.index
        waiter.generation = slot.generation
        self._set_lease(slot, waiter.id)
        if waiter.purpose == "call":
            slot.leases_granted += 1
        self._move(slot, S.BUSY, "health probe" if waiter.purpose == "health" else "checkout",
                   now)
        if waiter.session is not None and waiter.purpose == "call":
            binding = self.bindings.get(waiter.session)
            if binding is None:
                self.bindings[waiter.session] = Binding(slot.index, slot.generation,
                                                        slot.worker_id, self.clock())
                slot.sessions.add(waiter.session)
                self._reroute(waiter.session)
                self._emit(SESSION_BIND, session=waiter.session, slot=slot.index,
                           worker_id=slot.worker_id)
        if woken:
            self.actions.append(Wake(waiter.id))

    def _fail(self, waiter: Waiter, error: BaseException) -> None:
        woken = self._unqueue(waiter)  # as in _grant
        waiter.status = WaiterStatus.FAILED
        waiter.error = error
        if woken:
            self.actions.append(Wake(waiter.id))

    def _requeue(self, waiter: Waiter) -> None:
        waiter.status = WaiterStatus.QUEUED
        waiter.slot = None
        waiter.generation = None
        # Back in its own place: its arrival number puts it ahead of everyone
        # who came after it (the line is ordered by arrival, not by entry).
        self._enqueue(waiter)

    # --- introspection -----------------------------------------------------------

    def counts(self) -> CoreCounts:
        c = self.state_counts
        return CoreCounts(
            size=self.size, ready=c[S.READY], busy=c[S.BUSY], starting=c[S.STARTING],
            degraded=c[S.DEGRADED], stopping=c[S.STOPPING], stopped=c[S.STOPPED],
            waiting=len(self.queue), sessions=len(self.bindings), restarts=self.restarts,
            crashes=self.crashes, start_failures=self.start_failures,
            leased=self._leased,
            draining=c[S.DRAINING],
        )

    def check_invariants(self) -> None:
        """Raise AssertionError if the core's bookkeeping is inconsistent."""
        counts = self.counts()
        assert counts.busy + counts.ready + counts.starting <= self.size
        for state in S:
            actual = sum(1 for s in self.slots if s.lifecycle.state is state)
            assert self.state_counts[state] == actual, f"{state} count drifted"
        leases = [s.lease for s in self.slots if s.lease is not None]
        assert len(leases) == len(set(leases)), f"a waiter holds two slots: {leases}"
        for slot in self.slots:
            if slot.lease is not None:
                holder = self.waiters.get(slot.lease)
                assert holder is not None, f"slot {slot.index} leased to unknown waiter"
                assert holder.status in (WaiterStatus.GRANTED, WaiterStatus.HELD)
                assert holder.slot == slot.index
                assert slot.state in (S.BUSY, S.STOPPING, S.STOPPED) or \
                    holder.purpose == "health", f"leased slot {slot.index} is {slot.state}"
            if slot.state is S.BUSY:
                assert slot.lease is not None, f"busy slot {slot.index} has no lease"
            if slot.state is S.DRAINING:
                assert slot.lease is None, f"draining slot {slot.index} is leased"
        for waiter in self.queue.values():
            assert waiter.status is WaiterStatus.QUEUED, f"{waiter} in queue but not queued"
            assert waiter.slot is None
        for waiter in self.waiters.values():
            if waiter.status in (WaiterStatus.GRANTED, WaiterStatus.HELD):
                assert waiter.id not in self.queue, "waiter both queued and served"
        for session, binding in self.bindings.items():
            if binding.lost is None:
                slot = self.slots[binding.slot]
                assert slot.state is not S.STOPPED, f"session {session} bound to a dead slot"
                assert session in slot.sessions
        self._check_structures()

    def _check_structures(self) -> None:
        """The incremental structures against a recomputation by scanning."""
        slots = self.slots
        assert self._leased == sum(1 for s in slots if s.lease is not None), "leased drifted"
        free = [s for s in slots if s.lifecycle.state is S.READY and s.lease is None]
        assert [s for s in slots if s.free_token] == free, "free slots drifted"
        self._free.check(free)
        assert self._wanted_stopped == sum(1 for s in slots
                                           if s.wanted and s.state is S.STOPPED)
        for slot in slots:
            if not slot.wanted and slot.state is S.STOPPED:
                assert slot.index in self._unwanted_at, f"slot {slot.index} can't be started"
        assert sorted(self._unwanted_at) == sorted(self._unwanted)
        calls = [w for w in self.queue.values() if w.purpose == "call"]
        assert self._queued_calls == len(calls), "unmet demand drifted"
        for waiter in self.queue.values():
            assert waiter.status is WaiterStatus.QUEUED
            if waiter.purpose != "call":
                assert waiter.line is None
        self._any.check([w for w in calls if self._route(w) is None])
        for index, line in self._bound.items():
            line.check([w for w in calls if self._route(w) == index])
        routed = {self._route(w) for w in calls} - {None}
        assert routed <= set(self._bound), f"waiters routed to {routed - set(self._bound)}"
        by_session: dict[str, set[int]] = {}
        for waiter in calls:
            if waiter.session is not None:
                by_session.setdefault(waiter.session, set()).add(waiter.id)
        assert {s: set(q) for s, q in self._by_session.items()} == by_session
        for index, line in self._bound.items():
            if line.live and slots[index].free_token:
                assert index in self._offers, f"free slot {index} overlooks its waiters"
