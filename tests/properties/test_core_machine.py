"""State machine over the sans-IO PoolCore (layer 1): thousands of interleavings.

The machine plays the Trio shell and the slot tasks: it requests, receives,
cancels and checks in leases, starts, readies, kills and stops workers when the
core asks (StartWorker / StopWorker actions), lets time pass (the shell's
timers call ``expire``), runs health probes, lets a worker die without the core
noticing (the hand-off check, ``vet``, then says "process_dead"), makes the
policy Skip, unbinds sessions and closes. Lifecycle tables are strict, so an
invalid transition raises at once.

A small model alongside checks what the core's own ``check_invariants`` cannot
see: who holds which slot (never two waiters), that every served or failed
waiter is woken, that a dead worker or a waiter past its deadline is never
granted, that a queued waiter never waits while a worker it may use sits idle,
that session state is never lost silently, and that nothing starts after close.

It also models the waiting line and checks the order of service (the pool's
promise, see ``served_in_order``): a waiter's place is its arrival number, kept
when a grant is taken back; whenever a waiter is granted a worker, no waiter
that arrived before it and could have taken that same worker is still waiting.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine.errors import PoolClosed, PoolSaturated, PoolTimeout, SessionLost, WorkerBusy
from engine.pool.contract import Ok, Remove, Skip, Verdict
from engine.pool.core import (
    DrainWorker,
    Emit,
    PoolCore,
    Slot,
    StartWorker,
    StopWorker,
    Waiter,
    WaiterStatus,
    Wake,
)
from engine.pool.lifecycle import WorkerState
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer1

S = WorkerState
W = WaiterStatus
SESSIONS = st.sampled_from([None, None, "a", "b"])
SLOTS = st.integers(0, 2)


class PolicySkipped(Exception):
    """What the scripted policy's Skip hands to the waiter."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CoreMachine(RuleBasedStateMachine):
    waiters = Bundle("waiters")  # requested, not taken
    probes = Bundle("probes")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.core: PoolCore = None  # type: ignore[assignment]
        self.dead: set[int] = set()  # the worker died; the slot task has not noticed yet
        self.skip_next = False
        self.starts: dict[int, int] = {}  # slot -> generation the core asked to start
        self.stops: dict[int, int] = {}  # slot -> generation the core asked to stop
        self.spawned: set[int] = set()  # worker_starting called, no hello yet
        self.holder: dict[int, int] = {}  # slot -> waiter id granted it (model)
        self.bound: dict[str, int] = {}  # session -> slot (model)
        self.lost: set[str] = set()  # sessions whose worker died, not yet reported
        self.closed = False
        self.requested: dict[int, Waiter] = {}  # call waiters not yet checked in/cancelled
        self.draining: dict[int, int] = {}  # slot -> generation the core asked to drain
        # The model's own arrival numbers (not the core's ids: a core that
        # renumbered a waiter would fool a model that trusted them).
        self.arrival: dict[Waiter, int] = {}

    # --- plumbing -------------------------------------------------------------------

    def vet(self, slot: Slot, waiter: Waiter) -> Verdict:
        if slot.index in self.dead:
            return Verdict(Remove("process_dead"))
        if self.skip_next:
            self.skip_next = False
            return Verdict(Skip(PolicySkipped("policy said skip")))
        return Verdict(Ok())

    def step(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Call the core, then act on its actions and check what it decided."""
        before = {w.id: (w.status, w.slot, w.generation) for w in self.core.waiters.values()}
        result = fn(*args, **kwargs)
        # Waiters created by this step (request(), or a burst of them): one
        # granted inside request() is not woken, its caller reads its status.
        created = {w.id: w for w in (result if isinstance(result, list) else [result])
                   if isinstance(w, Waiter)}
        for waiter_id, waiter in created.items():
            before.setdefault(waiter_id, (W.QUEUED, None, None))
            self.arrival[waiter] = len(self.arrival)
        woken = set()
        granted_now: list[Waiter] = []
        for action in self.core.take_actions():
            if isinstance(action, Wake):
                woken.add(action.waiter)
            elif isinstance(action, StartWorker):
                assert not self.core.closing, f"{action} after close"
                slot = self.core.slots[action.slot]
                assert slot.state is S.STOPPED, f"{action} for a {slot.state} slot"
                assert action.generation == slot.generation + 1
                self.starts[action.slot] = action.generation
            elif isinstance(action, StopWorker):
                slot = self.core.slots[action.slot]
                assert slot.state is S.STOPPING, f"{action} for a {slot.state} slot"
                self.stops[action.slot] = action.generation
            elif isinstance(action, DrainWorker):
                slot = self.core.slots[action.slot]
                assert slot.state is S.DRAINING and slot.lease is None, \
                    f"{action} for a {slot.state} slot"
                self.draining[action.slot] = action.generation
            else:
                assert isinstance(action, Emit) and action.event[0] == "engine"
        for waiter_id, old in before.items():  # old: (status, slot, generation)
            waiter = self.core.waiters.get(waiter_id) or created.get(waiter_id)
            if waiter is None:
                continue
            now = (waiter.status, waiter.slot, waiter.generation)
            if waiter.status is W.GRANTED and now != old:
                # A waiter granted by request() itself is not woken (its caller
                # reads the status); any later grant must wake its sleeper.
                in_request = waiter_id in created
                self.granted(waiter, woken, fresh=old[0] is not W.GRANTED and not in_request)
                granted_now.append(waiter)
            if waiter.status is W.FAILED and old[0] is not W.FAILED:
                self.failed(waiter, woken)
        if granted_now:
            self.served_in_order(granted_now)
        return result

    def eligible_slot(self, waiter: Waiter) -> int | None:
        """The one slot a queued call waiter may take (its session's worker, strict
        or fail_fast affinity), -1 for any slot, None for none."""
        if waiter.session is None or self.core.affinity == "hint":
            return -1
        binding = self.core.bindings.get(waiter.session)
        if binding is None:
            return -1
        return None if binding.lost is not None else binding.slot

    def served_in_order(self, granted: list[Waiter]) -> None:
        """The pool's promise on order, checked after every step that granted:
        a waiter granted worker W arrived before every call waiter still queued
        that may take W (any queued anonymous waiter, any session waiter whose
        session has no worker yet or affinity='hint', any waiter whose session
        is bound to W). Arrival is the request's order; a waiter whose grant was
        taken back (its worker died before it took it) keeps its arrival, so it
        is served before everyone who came after it. Health probes take one
        given worker now or never, and are outside this order."""
        first_any: int | None = None
        first_on: dict[int, int] = {}
        for waiter in self.requested.values():
            if waiter.status is not W.QUEUED or waiter.purpose != "call":
                continue
            where = self.eligible_slot(waiter)
            came = self.arrival[waiter]
            if where == -1:
                first_any = came if first_any is None else min(first_any, came)
            elif where is not None:
                first_on[where] = min(first_on.get(where, came), came)
        for waiter in granted:
            if waiter.purpose != "call":
                continue
            assert waiter.slot is not None
            came = self.arrival[waiter]
            for ahead in (first_any, first_on.get(waiter.slot)):
                assert ahead is None or ahead > came, \
                    f"arrival #{came} served slot {waiter.slot} before arrival #{ahead}, " \
                    f"which came first and may take it"

    def granted(self, waiter: Waiter, woken: set[int], fresh: bool) -> None:
        assert waiter.slot is not None
        assert waiter.id in woken or waiter.purpose == "health" or not fresh, \
            f"waiter {waiter.id} granted but never woken"
        # Health probes skip the hand-off check on purpose: probing a dead worker
        # is how the pool finds out.
        assert waiter.slot not in self.dead or waiter.purpose == "health", \
            f"dead worker of slot {waiter.slot} handed over"
        if waiter.deadline is not None:
            assert self.clock.now < waiter.deadline, "waiter past its deadline was served"
        other = self.holder.get(waiter.slot)
        assert other is None, f"slot {waiter.slot} handed to waiter {waiter.id} while " \
                              f"waiter {other} holds it"
        assert self.draining.get(waiter.slot) != waiter.generation, \
            f"slot {waiter.slot} handed to waiter {waiter.id} while it drains"
        self.holder[waiter.slot] = waiter.id
        session = waiter.session
        if session is not None and waiter.purpose == "call":
            assert session not in self.lost, f"session {session!r} lost its worker silently"
            if session in self.bound and self.core.affinity != "hint":
                assert self.bound[session] == waiter.slot, f"session {session!r} misrouted"
            self.bound.setdefault(session, waiter.slot)

    def failed(self, waiter: Waiter, woken: set[int]) -> None:
        error = waiter.error
        assert isinstance(error, PoolClosed | PoolSaturated | PoolTimeout | SessionLost
                          | WorkerBusy | PolicySkipped), f"untyped failure {error!r}"
        if isinstance(error, SessionLost):
            assert waiter.session in self.lost, f"SessionLost for live {waiter.session!r}"
            self.lost.discard(waiter.session)
            self.bound.pop(waiter.session, None)
        if isinstance(error, PoolTimeout):
            assert waiter.deadline is not None and self.clock.now >= waiter.deadline

    def release_model(self, waiter: Waiter) -> None:
        if waiter.slot is not None and self.holder.get(waiter.slot) == waiter.id:
            del self.holder[waiter.slot]

    def slot(self, index: int) -> Slot:
        return self.core.slots[index % self.core.size]

    # --- set-up -----------------------------------------------------------------------

    @initialize(size=st.integers(1, 3), affinity=st.sampled_from(["strict", "fail_fast", "hint"]),
                lazy=st.sampled_from([False, False, True]), max_waiters=st.integers(1, 4),
                max_calls=st.none() | st.integers(1, 3),
                warm=st.sampled_from([True, True, False]))
    def setup(self, size: int, affinity: str, lazy: bool, max_waiters: int,
              max_calls: int | None, warm: bool) -> None:
        self.core = PoolCore(size, clock=self.clock, affinity=affinity, max_waiters=max_waiters,
                             lazy=lazy, max_calls_per_worker=max_calls, max_health_failures=2,
                             vet=self.vet, strict=True, name="core-machine")
        self.step(self.core.start)
        if warm:  # most interesting interleavings need ready workers: start there too
            while self.starts:
                self.start_and_ready(0)

    # --- callers ----------------------------------------------------------------------

    @rule(target=waiters, session=SESSIONS, timeout=st.sampled_from([None, 0.5, 1.0, 5.0]),
          then=st.sampled_from(["wait", "receive", "receive", "cycle"]))
    def request(self, session: str | None, timeout: float | None, then: str) -> Waiter:
        """A checkout. If served at once, the caller may take the lease right away
        (``receive``) and even return it (``cycle``); ``wait`` leaves the grant
        pending so that cancellation and worker death can come in between."""
        waiter = self.step(self.core.request, session, timeout)
        self.requested[waiter.id] = waiter
        if waiter.status is W.GRANTED and then != "wait":
            assert self.step(self.core.receive, waiter.id)
            if then == "cycle":
                self._checkin(waiter, clean=True, remove=False, calls=1)
        return waiter

    @rule(pick=st.integers(0, 7))
    def reject_at_receipt(self, pick: int) -> None:
        """A granted waiter finds its worker dead when it runs (the shell's
        re-check at receipt): the core stops that worker and puts the waiter
        back in its place."""
        waiter = self._pick(W.GRANTED, pick)
        if waiter is None or waiter.purpose != "call":
            return
        assert waiter.slot is not None
        index = waiter.slot
        slot = self.core.slots[index]
        self.release_model(waiter)
        live = slot.lease == waiter.id
        session = waiter.session
        found_dead = live and session is not None and self.bound.get(session) == index
        if found_dead:
            # This waiter is the first to see its session's worker dead: the
            # state is lost, and it must be told so now (checked in failed()).
            assert session is not None
            self.lost.add(session)
            del self.bound[session]
        self.step(self.core.reject_grant, waiter.id, "process_dead at receipt")
        if found_dead and not self.core.closing:
            assert waiter.status is W.FAILED and isinstance(waiter.error, SessionLost), \
                f"session {session!r}: its worker found dead at receipt, loss not reported"
        if live:
            assert slot.state in (S.STOPPING, S.STOPPED), slot.state
        assert waiter.status is not W.GRANTED or waiter.slot != index

    @rule(session=SESSIONS)
    def hold_every_worker(self, session: str | None) -> None:
        """Callers take every free worker (a session's first: one of them), so
        that the next requests queue: the waiting line, where order matters."""
        for _ in range(self.core.size):
            if self.core.closing or not any(
                    s.state is S.READY and s.lease is None for s in self.core.slots):
                return
            waiter = self.step(self.core.request, session)
            self.requested[waiter.id] = waiter
            if waiter.status is not W.GRANTED:
                return
            assert self.step(self.core.receive, waiter.id)
            session = None

    @rule(sessions=st.lists(SESSIONS, min_size=2, max_size=4))
    def queue_several(self, sessions: list[str | None]) -> None:
        """Callers arrive one after the other (each waits if no worker is free):
        anonymous and session waiters interleaved in the line."""
        for session in sessions:
            waiter = self.step(self.core.request, session, 5.0)
            self.requested[waiter.id] = waiter

    def _pick(self, status: WaiterStatus, pick: int) -> Waiter | None:
        found = [w for w in self.requested.values() if w.status is status]
        return found[pick % len(found)] if found else None

    @rule(pick=st.integers(0, 7))
    def receive(self, pick: int) -> None:
        """A granted waiter's task runs and takes its lease."""
        waiter = self._pick(W.GRANTED, pick)
        if waiter is not None:
            assert self.step(self.core.receive, waiter.id)
            assert waiter.status is W.HELD

    @rule(waiter=waiters)
    def receive_any(self, waiter: Waiter) -> None:
        """receive() on a waiter in any state: only a granted one may take a lease."""
        was = waiter.status
        took = self.step(self.core.receive, waiter.id)
        assert took == (was is W.GRANTED and waiter.id in self.core.waiters)

    @rule(waiter=consumes(waiters))
    def cancel(self, waiter: Waiter) -> None:
        if waiter.status is W.HELD:
            return  # the shell checks a held lease in, it never cancels it
        self.requested.pop(waiter.id, None)
        was = waiter.status
        index = waiter.slot
        generation = self.slot(index).generation if index is not None else None
        self.release_model(waiter)
        self.step(self.core.cancel, waiter.id)
        assert waiter.id not in self.core.queue
        if was is W.GRANTED and index is not None:
            slot = self.core.slots[index]
            # Cancelled between grant and receipt: the worker goes back unharmed.
            assert slot.generation == generation, "cancelled grant: the worker was replaced"
            assert slot.lease != waiter.id, \
                f"slot {index} still leased to waiter {waiter.id}, which was cancelled"
            if not self.core.closing and slot.retire_reason is None and index not in self.dead:
                assert slot.state in (S.READY, S.BUSY), f"cancelled grant left {slot.state}"

    @rule(pick=st.integers(0, 7), clean=st.sampled_from([True, True, True, False]),
          remove=st.sampled_from([False, False, False, True]), calls=st.integers(0, 2))
    def checkin(self, pick: int, clean: bool, remove: bool, calls: int) -> None:
        waiter = self._pick(W.HELD, pick)
        if waiter is not None:
            self._checkin(waiter, clean, remove, calls)

    def _checkin(self, waiter: Waiter, clean: bool, remove: bool, calls: int,
                 drain: bool = False) -> None:
        del self.requested[waiter.id]
        current = waiter.slot is not None and self.core.slots[waiter.slot].lease == waiter.id
        self.release_model(waiter)
        ok = self.step(self.core.checkin, waiter.id, clean=clean,
                       remove="policy said remove" if remove else None, calls=calls,
                       drain=drain)
        assert ok == current

    # --- cooperative cancellation ------------------------------------------------------

    @rule(pick=st.integers(0, 7), remove=st.sampled_from([False, False, False, True]))
    def checkin_abandoned(self, pick: int, remove: bool) -> None:
        """The lease's call was cancelled in flight: its worker drains."""
        waiter = self._pick(W.HELD, pick)
        if waiter is None:
            return
        index, generation = waiter.slot, waiter.generation
        self._checkin(waiter, False, remove, 1, drain=True)
        # This worker drains (an entry for an earlier worker of the slot, never
        # reported drained before it exited, does not count).
        if index is not None and self.draining.get(index) == generation:
            assert not self.core.closing and not remove

    @precondition(lambda self: self.draining)
    @rule(pick=SLOTS, ok=st.booleans())
    def drained(self, pick: int, ok: bool) -> None:
        index = sorted(self.draining)[pick % len(self.draining)]
        generation = self.draining.pop(index)
        slot = self.core.slots[index]
        live_before = slot.generation == generation and slot.state is S.DRAINING
        kept = {s for s, i in self.bound.items() if i == index}
        self.step(self.core.drained, index, generation, ok, "drained" if ok else "grace ended")
        if live_before:
            # Drained clean, it may be granted to a queued waiter at once.
            assert slot.state in ((S.READY, S.BUSY, S.STOPPING) if ok else (S.STOPPING,)), \
                slot.state
            if ok:  # sessions stay bound to the drained worker
                for session in kept:
                    binding = self.core.bindings.get(session)
                    assert binding is not None and binding.lost is None \
                        and binding.slot == index, f"session {session!r} lost by a drain"

    # --- workers ----------------------------------------------------------------------

    @precondition(lambda self: self.starts)
    @rule(pick=SLOTS)
    def worker_starting(self, pick: int) -> None:
        index = sorted(self.starts)[pick % len(self.starts)]
        wanted = self.starts.pop(index)
        generation = self.step(self.core.worker_starting, index)
        assert generation == wanted
        self.spawned.add(index)

    @precondition(lambda self: self.starts)
    @rule(pick=SLOTS)
    def start_and_ready(self, pick: int) -> None:
        """The common case in one step: the slot task spawns and the hello arrives."""
        index = sorted(self.starts)[pick % len(self.starts)]
        self.worker_starting(pick)
        self.worker_ready(sorted(self.spawned).index(index))

    @precondition(lambda self: self.spawned)
    @rule(pick=SLOTS)
    def worker_ready(self, pick: int) -> None:
        index = sorted(self.spawned)[pick % len(self.spawned)]
        self.spawned.discard(index)
        slot = self.core.slots[index]
        self.step(self.core.worker_ready, index, f"w{index}.{slot.generation}",
                  1000 * index + slot.generation)

    @rule(pick=SLOTS, crash=st.booleans())
    def worker_exited(self, pick: int, crash: bool) -> None:
        slot = self.slot(pick)
        if slot.state is S.STOPPED:
            return
        if not crash and slot.index not in self.stops:
            return  # a clean exit only follows a stop request
        if slot.index in self.spawned and slot.state is not S.STOPPING and not crash:
            return
        for session, index in list(self.bound.items()):
            if index == slot.index:
                self.lost.add(session)
                del self.bound[session]
        holder = self.holder.pop(slot.index, None)
        self.step(self.core.worker_exited, slot.index, "crashed" if crash else "stopped")
        self.dead.discard(slot.index)
        self.stops.pop(slot.index, None)
        self.spawned.discard(slot.index)
        if holder is not None:
            waiter = self.core.waiters.get(holder)
            # Granted but not taken: back in the queue (or served by another worker).
            assert waiter is None or waiter.status is not W.GRANTED or waiter.slot != slot.index


    @rule(pick=SLOTS)
    def worker_dies_unnoticed(self, pick: int) -> None:
        slot = self.slot(pick)
        if slot.state in (S.READY, S.BUSY, S.DEGRADED):
            self.dead.add(slot.index)

    @rule(dice=st.integers(0, 3))
    def policy_skips_next(self, dice: int) -> None:
        self.skip_next = dice == 0

    @rule(pick=SLOTS, dice=st.integers(0, 3))
    def retire(self, pick: int, dice: int) -> None:
        if dice == 0:  # rarer than the rest: it takes a worker away
            self.step(self.core.retire, self.slot(pick).index, "retired by test")

    # --- health probes ------------------------------------------------------------------

    @rule(target=probes, pick=SLOTS)
    def health_probe(self, pick: int) -> Waiter:
        # As the health loop does: take the slot now or give up at once.
        waiter = self.step(self.core.request, purpose="health", target=self.slot(pick).index)
        if waiter.status is W.GRANTED:
            assert self.step(self.core.receive, waiter.id)
        else:
            self.step(self.core.cancel, waiter.id)
            assert waiter.id not in self.core.queue
        return waiter

    @rule(probe=consumes(probes), ok=st.booleans())
    def health_result(self, probe: Waiter, ok: bool) -> None:
        if probe.status is W.HELD:
            self.release_model(probe)
            self.step(self.core.health_result, probe.id, ok, "" if ok else "probe failed")

    # --- time, sessions, close --------------------------------------------------------

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        for waiter in list(self.core.queue.values()):
            if waiter.deadline is not None and waiter.deadline <= self.clock.now:
                self.step(self.core.expire, waiter.id)

    @rule(session=st.sampled_from(["a", "b"]))
    def unbind(self, session: str) -> None:
        # The model forgets first: unbind() may serve a queued waiter at once.
        self.bound.pop(session, None)
        self.lost.discard(session)
        self.step(self.core.unbind, session)

    @rule(dice=st.integers(0, 5))
    def close(self, dice: int) -> None:
        if dice:
            return  # closing ends the interesting part: do it one time in six
        self.step(self.core.close)
        self.closed = True
        assert not self.core.queue
        self.starts.clear()

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def invariants(self) -> None:
        if self.core is None:
            return
        self.core_is_consistent()
        self.queued_iff_in_queue()
        self.holders_match_model()
        self.no_waiter_waits_beside_an_idle_worker()
        self.nothing_starts_after_close()

    def core_is_consistent(self) -> None:
        self.core.check_invariants()
        c = self.core.counts()
        assert c.busy + c.ready + c.starting <= c.size

    def queued_iff_in_queue(self) -> None:
        for waiter in self.core.waiters.values():
            assert (waiter.status is W.QUEUED) == (waiter.id in self.core.queue), \
                f"waiter {waiter.id} is {waiter.status} but queued={waiter.id in self.core.queue}"

    def holders_match_model(self) -> None:
        for slot in self.core.slots:
            if slot.lease is not None:
                assert self.holder.get(slot.index) == slot.lease, \
                    f"slot {slot.index} leased to {slot.lease}, model says " \
                    f"{self.holder.get(slot.index)}"

    def no_waiter_waits_beside_an_idle_worker(self) -> None:
        if self.core.closing:
            return
        free = [s for s in self.core.slots
                if s.state is S.READY and s.lease is None and s.index not in self.dead]
        for waiter in self.core.queue.values():
            if waiter.purpose != "call":
                continue
            binding = self.core.bindings.get(waiter.session) if waiter.session else None
            usable = free
            if binding is not None and binding.lost is None and self.core.affinity != "hint":
                usable = [s for s in free if s.index == binding.slot]
            assert not usable, f"waiter {waiter.id} queued while slot(s) " \
                               f"{[s.index for s in usable]} sit idle"

    def nothing_starts_after_close(self) -> None:
        if self.closed:
            assert not self.starts
            assert not self.core.queue, "waiter queued after close"


CoreMachine.TestCase.settings = scaled(max_examples=1000, stateful_step_count=40)
TestCoreMachine = CoreMachine.TestCase


def test_unbind_redispatches_queued_waiters() -> None:
    """A strict waiter queued for a session's busy worker may use any idle worker
    once the session is unbound (end_session, TTL expiry); it should not wait for
    an unrelated event."""
    clock = Clock()
    core = PoolCore(2, clock=clock, strict=True)
    core.start()
    for index in (0, 1):
        core.worker_starting(index)
    core.worker_ready(0, "w0", 1)
    first = core.request("s")
    assert first.status is W.GRANTED and first.slot == 0
    core.receive(first.id)
    second = core.request("s")
    assert second.status is W.QUEUED  # strict: waits for slot 0
    core.worker_ready(1, "w1", 2)  # slot 1 idle, but not for session s
    assert second.status is W.QUEUED
    core.unbind("s")
    assert second.status is W.GRANTED and second.slot == 1


def test_no_requeue_after_close() -> None:
    """A waiter granted a worker that dies after close must get PoolClosed, not wait
    in the queue of a closed pool until its own deadline."""
    core = PoolCore(1, clock=Clock(), strict=True)
    core.start()
    core.worker_starting(0)
    waiter = core.request(None, None)
    core.worker_ready(0, "w0", 1)
    assert waiter.status is W.GRANTED
    core.close()
    core.worker_exited(0, "crashed")
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolClosed)


def hint_core(dead: set[int]) -> PoolCore:
    """Two ready workers, affinity='hint'; the hand-off check removes the
    workers of the slots in ``dead`` (add to it to kill one)."""
    def vet(slot: Slot, waiter: Waiter) -> Verdict:
        return Verdict(Remove("process_dead") if slot.index in dead else Ok())

    core = PoolCore(2, clock=Clock(), affinity="hint", vet=vet, strict=True)
    core.start()
    for index in (0, 1):
        core.worker_starting(index)
        core.worker_ready(index, f"w{index}", index)
    return core


def test_hint_waiter_falls_back_after_removal() -> None:
    """affinity='hint': when the session's worker fails the hand-off check, the
    waiter should get another idle worker at once."""
    dead: set[int] = set()
    core = hint_core(dead)
    first = core.request("s")
    bound = first.slot
    assert bound is not None
    core.cancel(first.id)  # the worker goes back; the session stays bound to it
    dead.add(bound)
    second = core.request("s")
    assert second.status is W.GRANTED and second.slot == 1 - bound


def test_retire_while_leased_stops_after_checkin() -> None:
    """retire() on a leased worker is remembered: the lease finishes first, then the
    worker stops (it is not handed to anyone else)."""
    core = PoolCore(1, clock=Clock(), strict=True)
    core.start()
    core.worker_starting(0)
    core.worker_ready(0, "w0", 1)
    held = core.request(None)
    core.receive(held.id)
    core.take_actions()
    core.retire(0, "rss above max_rss_mb")
    assert core.slots[0].state is WorkerState.BUSY
    waiting = core.request(None, 5.0)
    core.checkin(held.id, clean=True)
    assert core.slots[0].state is WorkerState.STOPPING
    assert waiting.status is W.QUEUED
    stops = [a for a in core.take_actions() if isinstance(a, StopWorker)]
    assert [(a.slot, a.reason, a.graceful) for a in stops] == [(0, "rss above max_rss_mb", True)]


class ScaleCoreMachine(CoreMachine):
    """The same machine and model at scale: hundreds of slots, thousands of
    waiters (bursts of requests, mass check-ins, cancellations and crashes), so
    that the core's incremental structures (the waiting line's heaps, the free
    slots, the counts; see PoolCore.check_invariants) are proven where a scan
    and a heap would disagree. Invariants only: nothing here measures time."""

    @initialize(size=st.integers(100, 300),
                affinity=st.sampled_from(["strict", "fail_fast", "hint"]),
                lazy=st.sampled_from([False, True]), max_calls=st.none() | st.integers(1, 3))
    def setup(self, size: int, affinity: str, lazy: bool,  # type: ignore[override]
              max_calls: int | None) -> None:
        self.core = PoolCore(size, clock=self.clock, affinity=affinity, max_waiters=5000,
                             lazy=lazy, max_calls_per_worker=max_calls, max_health_failures=2,
                             vet=self.vet, strict=True, name="core-scale")
        self.step(self.core.start)
        while self.starts:
            self.start_and_ready(0)

    @rule(count=st.integers(100, 2000), sessions=st.integers(0, 400),
          timeout=st.sampled_from([None, 1.0, 5.0]))
    def burst(self, count: int, sessions: int, timeout: float | None) -> None:
        """Many callers at once; ``sessions``: how many distinct sessions share
        them (each caller picks one, or none, by its number)."""
        def requests() -> list[Waiter]:
            return [self.core.request(
                None if not sessions or i % 3 == 0 else f"s{i % sessions}", timeout)
                for i in range(count)]
        for waiter in self.step(requests):
            self.requested[waiter.id] = waiter

    @rule(share=st.sampled_from([2, 3, 10]))
    def receive_many(self, share: int) -> None:
        granted = [w for w in self.requested.values() if w.status is W.GRANTED]
        taken = granted[::share]
        self.step(lambda: [self.core.receive(w.id) for w in taken])
        assert all(w.status is W.HELD for w in taken)

    @rule(share=st.sampled_from([1, 2, 3]), clean=st.booleans())
    def checkin_many(self, share: int, clean: bool) -> None:
        held = [w for w in self.requested.values() if w.status is W.HELD][::share]
        for waiter in held:
            del self.requested[waiter.id]
            self.release_model(waiter)
        self.step(lambda: [self.core.checkin(w.id, clean=clean, calls=1) for w in held])

    @rule(share=st.sampled_from([2, 5]))
    def cancel_many(self, share: int) -> None:
        queued = [w for w in self.requested.values() if w.status is W.QUEUED][::share]
        for waiter in queued:
            del self.requested[waiter.id]
        self.step(lambda: [self.core.cancel(w.id) for w in queued])
        assert not any(w.id in self.core.queue for w in queued)

    @rule(first=st.integers(0, 299), count=st.integers(1, 50), crash=st.booleans())
    def exit_many(self, first: int, count: int, crash: bool) -> None:
        for index in range(first, first + count):
            self.worker_exited(index, crash)

    @rule()
    def start_all(self) -> None:
        while self.starts:
            self.start_and_ready(0)


ScaleCoreMachine.TestCase.settings = scaled(max_examples=30, stateful_step_count=20)
TestScaleCoreMachine = ScaleCoreMachine.TestCase


def ready_core(size: int, **kwargs: object) -> PoolCore:
    core = PoolCore(size, clock=Clock(), strict=True, **kwargs)  # type: ignore[arg-type]
    core.start()
    for index in range(size):
        core.worker_starting(index)
        core.worker_ready(index, f"w{index}", index)
    core.take_actions()
    return core


def test_reject_at_receipt_after_close_fails_the_waiter() -> None:
    """A grant found dead at receipt after close: the waiter gets PoolClosed at
    once; a closed pool's queue must not take it back (found by the machine's
    reject_at_receipt rule)."""
    core = ready_core(1)
    waiter = core.request(None)
    assert waiter.status is W.GRANTED
    core.close()
    core.reject_grant(waiter.id, "process_dead at receipt")
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolClosed)
    assert not core.queue

