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
import itertools
from collections.abc import Callable
from typing import Any

import attrs

from engine.errors import PoolClosed, PoolSaturated, PoolTimeout, SessionLost, WorkerBusy
from engine.pool.contract import Ok, Remove, Skip, Verdict
from engine.pool.lifecycle import Lifecycle, Transition, WorkerState
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
        self.queue: dict[int, Waiter] = {}  # insertion-ordered: FIFO
        self.bindings: dict[str, Binding] = {}
        self.closing = False
        self.restarts = 0
        self.crashes = 0  # workers that died on their own after their hello
        self.start_failures = 0
        self._ids = itertools.count(1)
        self._tick = itertools.count(1)
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
        slot.wanted = True
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
            if lease is not None and lease.status is WaiterStatus.GRANTED:
                # Granted but not yet taken: the waiter goes back to the queue
                # rather than being handed a dead worker (or, if the pool is
                # closing, learns that at once).
                if self.closing:
                    lease.slot = lease.generation = None
                    self._fail(lease, PoolClosed(pool=self.name))
                else:
                    self._requeue(lease)
            slot.lease = None
        self._lose_sessions(slot, reason)
        slot.worker_id = None
        slot.pid = None
        if self.closing or not restart:
            slot.wanted = False
        if slot.wanted and not self.closing:
            self.actions.append(StartWorker(slot.index, slot.generation + 1))
        self._ensure_capacity()
        self._dispatch()

    def _lose_sessions(self, slot: Slot, reason: str) -> None:
        for session in slot.sessions:
            binding = self.bindings.get(session)
            if binding is not None and binding.slot == slot.index:
                binding.lost = reason
                self._emit(SESSION_LOST, session=session, slot=slot.index, reason=reason)
        slot.sessions.clear()
        # A strict waiter queued for a session whose worker just died is the "next
        # call": it learns that the state is gone.
        for waiter in list(self.queue.values()):
            if waiter.session is not None:
                binding = self.bindings.get(waiter.session)
                if binding is not None and binding.lost is not None:
                    self._fail(waiter, self._session_lost(waiter.session, binding))

    def _session_lost(self, session: str, binding: Binding) -> SessionLost:
        del self.bindings[session]
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
            self.queue[waiter.id] = waiter
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
        if slot.lease == waiter.id and slot.generation == waiter.generation:
            slot.lease = None
            self._stop(slot, reason, graceful=False)
        self._requeue(waiter)
        self._dispatch()

    def cancel(self, waiter_id: int) -> None:
        """The caller gave up (cancelled or timed out) before taking its lease."""
        waiter = self.waiters.get(waiter_id)
        if waiter is None:
            return
        if waiter.status is WaiterStatus.QUEUED:
            self.queue.pop(waiter.id, None)
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
        for waiter in list(self.queue.values()):
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
        slot.lease = None
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
        slot.lease = None
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
        # A strict waiter queued for that worker may now take any worker.
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
        slot.wanted = False
        self.retire(index, reason)

    def close(self) -> None:
        """Stop serving: every queued waiter gets PoolClosed; idle workers stop."""
        if self.closing:
            return
        self.closing = True
        for waiter in list(self.queue.values()):
            self._fail(waiter, PoolClosed(pool=self.name))
        for slot in self.slots:
            slot.wanted = False
            if slot.state in (S.READY, S.DEGRADED, S.STARTING):
                self._stop(slot, "pool closing", graceful=True)

    def _stop(self, slot: Slot, reason: str, *, graceful: bool) -> None:
        if slot.state in (S.STOPPING, S.STOPPED):
            return
        self._move(slot, S.STOPPING, reason)
        self.actions.append(StopWorker(slot.index, slot.generation, reason, graceful))

    # --- dispatch ----------------------------------------------------------------

    def _ensure_capacity(self) -> None:
        """Lazy pools (and shrunk ones) start workers when waiters outnumber them."""
        if self.closing:
            return
        unmet = sum(1 for w in self.queue.values() if w.purpose == "call")
        coming = sum(1 for s in self.slots if s.state is S.STARTING
                     or (s.wanted and s.state is S.STOPPED))
        for slot in self.slots:
            if unmet <= coming:
                break
            if not slot.wanted and slot.state is S.STOPPED:
                self._want(slot)
                coming += 1

    def _dispatch(self) -> None:
        if not self.queue:
            return
        now = self.clock()
        for waiter in list(self.queue.values()):
            if not self._has_free_slot():
                return
            if waiter.status is WaiterStatus.QUEUED:
                self._try_serve(waiter, now)

    def _has_free_slot(self) -> bool:
        return any(s.lifecycle.state is S.READY and s.lease is None for s in self.slots)

    def _try_serve(self, waiter: Waiter, now: float) -> None:
        if waiter.deadline is not None and now >= waiter.deadline:
            self.expire(waiter.id)
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

    def _candidates(self, waiter: Waiter) -> list[Slot]:
        if waiter.purpose == "health":
            slot = self.slots[waiter.target] if waiter.target is not None else None
            ok = slot is not None and slot.lease is None and slot.state in (S.READY, S.DEGRADED)
            return [slot] if ok and slot is not None else []
        free = [s for s in self.slots if s.lifecycle.state is S.READY and s.lease is None]
        if len(free) > 1 or waiter.session is not None:
            return self._order(waiter, free)
        return free

    def _order(self, waiter: Waiter, free: list[Slot]) -> list[Slot]:
        if waiter.session is not None:
            binding = self.bindings.get(waiter.session)
            if binding is not None:
                bound = self.slots[binding.slot]
                if self.affinity == "hint":
                    # The session's worker first; any other if it is busy or fails
                    # the hand-off check.
                    others = sorted((s for s in free if s is not bound),
                                    key=lambda s: -s.last_used)
                    return [bound, *others] if bound in free else others
                return [bound] if bound in free else []
            # First use: the worker with the fewest sessions, warmest first.
            return sorted(free, key=lambda s: (len(s.sessions), -s.last_used))
        # Anonymous: most recently used first, to keep caches warm.
        return sorted(free, key=lambda s: -s.last_used)

    def _grant(self, waiter: Waiter, slot: Slot, now: float) -> None:
        # Only a queued waiter sleeps: it is woken. One served while asking
        # (inside request()) or re-granted while running reads its status.
        woken = self.queue.pop(waiter.id, None) is not None
        waiter.status = WaiterStatus.GRANTED
        waiter.slot = slot.index
        waiter.generation = slot.generation
        slot.lease = waiter.id
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
                self._emit(SESSION_BIND, session=waiter.session, slot=slot.index,
                           worker_id=slot.worker_id)
        if woken:
            self.actions.append(Wake(waiter.id))

    def _fail(self, waiter: Waiter, error: BaseException) -> None:
        woken = self.queue.pop(waiter.id, None) is not None  # as in _grant
        waiter.status = WaiterStatus.FAILED
        waiter.error = error
        if woken:
            self.actions.append(Wake(waiter.id))

    def _requeue(self, waiter: Waiter) -> None:
        waiter.status = WaiterStatus.QUEUED
        waiter.slot = None
        waiter.generation = None
        # Back at the head of the line: it was first before.
        self.queue = {waiter.id: waiter, **self.queue}

    # --- introspection -----------------------------------------------------------

    def counts(self) -> CoreCounts:
        c = self.state_counts
        return CoreCounts(
            size=self.size, ready=c[S.READY], busy=c[S.BUSY], starting=c[S.STARTING],
            degraded=c[S.DEGRADED], stopping=c[S.STOPPING], stopped=c[S.STOPPED],
            waiting=len(self.queue), sessions=len(self.bindings), restarts=self.restarts,
            crashes=self.crashes, start_failures=self.start_failures,
            leased=sum(1 for s in self.slots if s.lease is not None),
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
