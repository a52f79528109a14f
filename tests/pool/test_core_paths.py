"""The sans-IO core's less travelled paths, one at a time (issue 15, layer 1).

Health probes and their results, drains (cooperative cancellation), check-in's
branches (closing, dirty, removed, retired, recycled), retirement, shrinking
and closing, each driven on a small PoolCore with a manual clock and pinned by
what the core answers: the actions it queues, slot states and transition
reasons, counts and waiter outcomes, with ``check_invariants()`` after every
step. The core state machine covers the same ground at random; these are the
fast, exact tests that mutation testing of the core runs (tools/mutation.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.errors import (
    ContractViolation,
    PoolClosed,
    PoolSaturated,
    PoolTimeout,
    SessionLost,
    WorkerBusy,
)
from engine.pool.contract import Ok, Remove, Skip, Verdict
from engine.pool.core import (
    Action,
    CoreCounts,
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
from engine.telemetry.events import (
    CONTRACT_VIOLATION,
    HEALTH_FAILED,
    SESSION_BIND,
    SESSION_LOST,
    WORKER_TRANSITION,
)
from tests.properties.test_core_machine import Clock, hint_core, ready_core

pytestmark = pytest.mark.layer1

S = WorkerState
W = WaiterStatus


def clock_of(core: PoolCore) -> Clock:
    clock = core.clock
    assert isinstance(clock, Clock)
    return clock


def take(core: PoolCore) -> list[Action]:
    """The core's pending actions, events left out, after checking its invariants."""
    core.check_invariants()
    return [a for a in core.take_actions() if not isinstance(a, Emit)]


def events(actions: list[Action], name: tuple[str, ...]) -> list[Emit]:
    return [a for a in actions if isinstance(a, Emit) and a.event == name]


def last_reason(core: PoolCore, index: int) -> tuple[WorkerState, str]:
    transition = core.slots[index].lifecycle.history[-1]
    return transition.new, transition.reason


def held(core: PoolCore, session: str | None = None) -> Waiter:
    waiter = core.request(session)
    assert waiter.status is W.GRANTED
    assert core.receive(waiter.id)
    return waiter


def probe(core: PoolCore, index: int) -> Waiter:
    waiter = core.request(purpose="health", target=index)
    assert waiter.status is W.GRANTED and waiter.slot == index
    assert core.slots[index].state is S.BUSY
    assert last_reason(core, index) == (S.BUSY, "health probe")
    return waiter


def exit_and_restart(core: PoolCore, index: int, worker_id: str) -> None:
    core.worker_exited(index, "stopped")
    core.worker_starting(index)
    core.worker_ready(index, worker_id, 99)


# --- health probes ------------------------------------------------------------------


def test_health_candidates_are_idle_unleased_ready_or_degraded_slots() -> None:
    core = ready_core(3)
    clock = clock_of(core)
    clock.now = 10.0
    lease = held(core)
    assert lease.slot == 0  # leased: never a candidate
    core.health_result(probe(core, 2).id, ok=False, reason="slow")
    assert core.slots[2].state is S.DEGRADED
    core.slots[1].last_used = 4.0
    core.slots[2].last_used = 5.0
    # Idle since 4.0 and 5.0: 6 s and 5 s at t=10; the boundary counts.
    assert core.health_candidates(5.0) == [1, 2]
    assert core.health_candidates(5.5) == [1]
    assert core.health_candidates(6.0) == [1]
    assert core.health_candidates(6.5) == []
    core.retire(1, "gone")
    assert core.health_candidates(0.0) == [2]


def test_probe_of_a_busy_slot_is_not_granted_and_never_joins_the_line() -> None:
    core = ready_core(1)
    lease = held(core)
    waiter = core.request(purpose="health", target=0)
    assert waiter.status is W.QUEUED
    assert core.counts().waiting == 1
    core.checkin(lease.id, clean=True)
    # A freed worker is not handed to a queued probe: it asked for "now or never".
    assert waiter.status is W.QUEUED and core.slots[0].state is S.READY
    take(core)
    core.cancel(waiter.id)
    assert core.counts().waiting == 0 and waiter.id not in core.waiters
    take(core)


def test_probe_without_target_or_of_a_stopped_slot_is_not_granted() -> None:
    core = ready_core(1)
    assert core.request(purpose="health").status is W.QUEUED
    core.retire(0, "gone")
    assert core.request(purpose="health", target=0).status is W.QUEUED
    take(core)


def test_passed_probe_returns_the_worker_ready_and_clears_failures() -> None:
    core = ready_core(2, max_health_failures=3)
    first = probe(core, 1)
    core.health_result(first.id, ok=False, reason="slow")
    assert core.slots[1].health_failures == 1
    second = probe(core, 1)  # a degraded worker can be probed again
    core.take_actions()
    core.health_result(second.id, ok=True)
    slot = core.slots[1]
    assert slot.state is S.READY and slot.lease is None and slot.health_failures == 0
    assert last_reason(core, 1) == (S.READY, "health check passed")
    assert second.status is W.DONE and second.id not in core.waiters
    assert core.counts().leased == 0
    assert take(core) == []
    assert slot.leases_granted == 0  # probes are not leases


def test_failed_probe_degrades_and_reports_the_failure_count() -> None:
    core = ready_core(1, max_health_failures=3)
    waiter = probe(core, 0)
    core.take_actions()
    clock_of(core).now = 2.0
    core.health_result(waiter.id, ok=False, reason="no pong")
    actions = core.take_actions()
    [failed] = events(actions, HEALTH_FAILED)
    assert failed.metadata == {"slot": 0, "worker_id": "w0", "failures": 1,
                               "reason": "no pong"}
    assert not [a for a in actions if isinstance(a, StopWorker)]
    assert core.slots[0].state is S.DEGRADED and core.slots[0].lease is None
    assert last_reason(core, 0) == (S.DEGRADED, "health check failed: no pong")
    assert waiter.status is W.DONE and core.counts().degraded == 1
    # A degraded worker is not handed out: a call waits.
    call = core.request(None)
    assert call.status is W.QUEUED
    core.check_invariants()


def test_failures_in_a_row_up_to_the_limit_replace_the_worker() -> None:
    core = ready_core(1, max_health_failures=3)
    for failures in (1, 2):
        core.health_result(probe(core, 0).id, ok=False, reason="slow")
        assert core.slots[0].health_failures == failures
        assert not [a for a in take(core) if isinstance(a, StopWorker)]
    core.health_result(probe(core, 0).id, ok=False, reason="slow")
    assert take(core) == [StopWorker(0, 1, "3 health checks failed in a row", False)]
    assert core.slots[0].state is S.STOPPING
    core.worker_exited(0, "stopped")
    assert take(core) == [StartWorker(0, 2)]
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 5)
    assert core.slots[0].health_failures == 0


def test_a_pass_resets_the_count_of_failures_in_a_row() -> None:
    core = ready_core(1, max_health_failures=2)
    core.health_result(probe(core, 0).id, ok=False, reason="slow")
    core.health_result(probe(core, 0).id, ok=True)
    core.health_result(probe(core, 0).id, ok=False, reason="slow")
    assert core.slots[0].state is S.DEGRADED
    assert not [a for a in take(core) if isinstance(a, StopWorker)]


def test_unusable_after_failed_probe_replaces_the_worker_at_once() -> None:
    core = ready_core(1, max_health_failures=3)
    waiter = probe(core, 0)
    core.health_result(waiter.id, ok=False, reason="timed out", unusable=True)
    assert take(core) == [StopWorker(
        0, 1, "its channel can't be used again after a failed health check", False)]
    assert core.slots[0].health_failures == 1


def test_passed_probe_serves_a_queued_call() -> None:
    core = ready_core(1)
    waiter = probe(core, 0)
    call = core.request(None)
    assert call.status is W.QUEUED
    core.take_actions()
    core.health_result(waiter.id, ok=True)
    assert call.status is W.GRANTED and call.slot == 0
    assert take(core) == [Wake(call.id)]
    assert last_reason(core, 0) == (S.BUSY, "checkout")


def test_probe_on_a_worker_retired_meanwhile_stops_it_after_the_result() -> None:
    for ok in (True, False):
        core = ready_core(1)
        waiter = probe(core, 0)
        core.retire(0, "config reloaded")
        assert take(core) == []  # a leased worker is stopped after its lease
        core.health_result(waiter.id, ok=ok, reason="slow")
        assert take(core) == [StopWorker(0, 1, "config reloaded", True)]


def test_stale_health_results_are_ignored() -> None:
    core = ready_core(1)
    core.health_result(12345, ok=False, reason="unknown waiter")
    waiter = probe(core, 0)
    core.worker_exited(0, "killed", crashed=True)
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 7)
    core.take_actions()
    core.health_result(waiter.id, ok=False, reason="late", unusable=True)
    assert core.slots[0].state is S.READY and core.slots[0].health_failures == 0
    assert take(core) == []
    # A probe that was never granted (no slot) is ignored too.
    lease = held(core)
    queued = core.request(purpose="health", target=0)
    core.health_result(queued.id, ok=False, reason="never ran", unusable=True)
    assert core.slots[0].state is S.BUSY and core.slots[0].lease == lease.id
    take(core)


def test_probe_result_for_a_slot_leased_to_someone_else_is_ignored() -> None:
    core = ready_core(1)
    waiter = probe(core, 0)
    core.slots[0].lease = waiter.id + 100  # as if the lease moved on: same generation
    core.health_result(waiter.id, ok=False, reason="late", unusable=True)
    assert core.slots[0].state is S.BUSY and core.slots[0].health_failures == 0


# --- drains (cooperative cancellation) --------------------------------------------


def drain(core: PoolCore, lease: Waiter, *, calls: int = 0) -> None:
    assert lease.slot is not None
    assert core.checkin(lease.id, clean=False, drain=True, calls=calls)
    assert core.slots[lease.slot].state is S.DRAINING
    assert last_reason(core, lease.slot) == (S.DRAINING, "call abandoned in flight")


def test_abandoned_call_drains_instead_of_stopping() -> None:
    core = ready_core(1)
    lease = held(core, "s")
    core.take_actions()
    drain(core, lease, calls=1)
    assert take(core) == [DrainWorker(0, 1)]
    counts = core.counts()
    assert (counts.draining, counts.leased, counts.ready, counts.busy) == (1, 0, 0, 0)
    assert core.slots[0].sessions == {"s"}  # kept while it drains
    call = core.request(None)
    assert call.status is W.QUEUED  # a draining worker is not free
    core.drained(0, 1, ok=True, reason="reply read back")
    drained = core.slots[0].lifecycle.history[-2]
    assert (drained.new, drained.reason) == (S.READY, "drained: reply read back")
    assert call.status is W.GRANTED and call.slot == 0
    assert take(core) == [Wake(call.id)]
    assert core.bindings["s"].lost is None


def test_drain_ending_ready_returns_the_worker_to_ready() -> None:
    core = ready_core(1)
    lease = held(core)
    drain(core, lease)
    core.drained(0, 1, ok=True, reason="within grace")
    assert core.slots[0].state is S.READY
    assert last_reason(core, 0) == (S.READY, "drained: within grace")
    assert take(core) == [DrainWorker(0, 1)]


def test_failed_drain_kills_the_worker_and_its_sessions_go() -> None:
    core = ready_core(1)
    lease = held(core, "s")
    drain(core, lease)
    core.take_actions()
    core.drained(0, 1, ok=False, reason="grace ended")
    assert take(core) == [StopWorker(0, 1, "grace ended", False)]
    core.worker_exited(0, "grace ended")
    actions = core.take_actions()
    assert [e.metadata["session"] for e in events(actions, SESSION_LOST)] == ["s"]
    waiter = core.request("s")
    assert waiter.status is W.FAILED and isinstance(waiter.error, SessionLost)


def test_stale_drain_reports_are_ignored() -> None:
    core = ready_core(1)
    core.drained(0, 1, ok=False, reason="not draining")  # READY: ignored
    assert core.slots[0].state is S.READY
    lease = held(core)
    drain(core, lease)
    core.take_actions()
    core.drained(0, 2, ok=False, reason="other generation")
    assert core.slots[0].state is S.DRAINING
    assert take(core) == []


def test_drain_of_a_worker_retired_meanwhile_stops_it() -> None:
    core = ready_core(1)
    drain(core, held(core))
    core.retire(0, "shrunk")
    assert core.slots[0].retire_reason == "shrunk"
    core.take_actions()
    core.drained(0, 1, ok=True, reason="ok")
    assert take(core) == [StopWorker(0, 1, "shrunk", True)]


def test_drain_ending_at_the_call_limit_recycles_the_worker() -> None:
    core = ready_core(1, max_calls_per_worker=2)
    lease = held(core)
    drain(core, lease, calls=2)
    core.take_actions()
    core.drained(0, 1, ok=True, reason="ok")
    assert take(core) == [StopWorker(0, 1, "recycled after 2 calls", True)]


def test_drain_below_the_call_limit_keeps_the_worker() -> None:
    core = ready_core(1, max_calls_per_worker=3)
    drain(core, held(core), calls=2)
    core.take_actions()
    core.drained(0, 1, ok=True, reason="ok")
    assert core.slots[0].state is S.READY and take(core) == []


def test_drain_ending_after_close_stops_the_worker_gracefully() -> None:
    core = ready_core(1)
    drain(core, held(core))
    core.close()
    assert core.slots[0].state is S.DRAINING  # close stops idle workers only
    core.take_actions()
    core.drained(0, 1, ok=True, reason="ok")
    assert take(core) == [StopWorker(0, 1, "pool closing", True)]


def test_drain_with_a_removal_stops_instead() -> None:
    core = ready_core(1)
    lease = held(core)
    core.take_actions()
    assert core.checkin(lease.id, clean=True, drain=True, remove="policy said so")
    assert take(core) == [StopWorker(0, 1, "policy said so", True)]


# --- check-in -------------------------------------------------------------------------


def test_clean_checkin_returns_the_worker_ready() -> None:
    core = ready_core(1)
    clock = clock_of(core)
    lease = held(core, "s")
    clock.now = 3.0
    assert core.checkin(lease.id, clean=True, calls=2)
    slot = core.slots[0]
    assert slot.state is S.READY and slot.calls == 2 and slot.last_used == 3.0
    assert last_reason(core, 0) == (S.READY, "checked in")
    assert core.bindings["s"].last_used == 3.0
    assert lease.status is W.DONE and lease.id not in core.waiters
    assert take(core) == []
    clock.now = 9.0
    assert core.expired_sessions(6.0) == ["s"]
    assert core.expired_sessions(6.5) == []


def test_cancel_between_grant_and_receipt_returns_the_worker() -> None:
    core = ready_core(1)
    waiter = core.request(None)
    core.cancel(waiter.id)
    assert core.slots[0].state is S.READY
    assert last_reason(core, 0) == (S.READY, "waiter cancelled before receipt")
    assert waiter.status is W.DONE and take(core) == []


def test_stale_or_unknown_tokens_are_refused() -> None:
    core = ready_core(1)
    assert not core.checkin(999, clean=True)
    lease = held(core)
    core.worker_exited(0, "killed", crashed=True)
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 3)
    core.take_actions()
    assert not core.checkin(lease.id, clean=True)
    assert core.slots[0].state is S.READY and core.slots[0].calls == 0
    queued = core.request(purpose="health")  # never granted: no slot
    assert not core.checkin(queued.id, clean=True)
    take(core)


def test_dirty_checkin_stops_the_worker_at_once() -> None:
    core = ready_core(1)
    lease = held(core)
    core.take_actions()
    assert core.checkin(lease.id, clean=False)
    assert take(core) == [StopWorker(0, 1, "dirty after its lease", False)]
    assert core.slots[0].state is S.STOPPING
    assert [t.new for t in core.slots[0].lifecycle.history][-2:] == [S.READY, S.STOPPING]


def test_checkin_with_removal_stops_with_that_reason() -> None:
    for clean in (True, False):
        core = ready_core(1)
        lease = held(core)
        core.take_actions()
        assert core.checkin(lease.id, clean=clean, remove="too much memory")
        assert take(core) == [StopWorker(0, 1, "too much memory", clean)]


def test_checkin_of_a_retired_worker_stops_it_gracefully() -> None:
    core = ready_core(2)
    lease = held(core)
    assert lease.slot is not None
    core.retire(lease.slot, "scaled down", graceful=False)
    assert take(core) == [] and core.slots[lease.slot].state is S.BUSY
    assert core.checkin(lease.id, clean=True)
    assert take(core) == [StopWorker(lease.slot, 1, "scaled down", True)]


def test_recycle_after_the_call_limit() -> None:
    core = ready_core(1, max_calls_per_worker=3)
    core.checkin(held(core).id, clean=True, calls=2)
    assert core.slots[0].state is S.READY and take(core) == []
    core.checkin(held(core).id, clean=True, calls=1)
    assert take(core) == [StopWorker(0, 1, "recycled after 3 calls", True)]
    core.worker_exited(0, "recycled")
    assert take(core) == [StartWorker(0, 2)]
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 4)
    assert core.slots[0].calls == 0 and core.counts().restarts == 1


def test_no_call_limit_never_recycles() -> None:
    core = ready_core(1, max_calls_per_worker=None)
    core.checkin(held(core).id, clean=True, calls=10_000)
    assert core.slots[0].state is S.READY and take(core) == []


def test_checkin_after_close_stops_the_worker() -> None:
    core = ready_core(2)
    lease = held(core)
    assert lease.slot is not None
    core.close()
    core.take_actions()
    assert core.checkin(lease.id, clean=True)
    assert take(core) == [StopWorker(lease.slot, 1, "pool closing", True)]
    assert core.counts().stopping == 2


def test_checkin_serves_the_next_waiter() -> None:
    core = ready_core(1)
    lease = held(core)
    nxt = core.request(None)
    core.take_actions()
    core.checkin(lease.id, clean=True)
    assert nxt.status is W.GRANTED and take(core) == [Wake(nxt.id)]


# --- retirement, shrinking, closing ------------------------------------------------------


def test_retire_stops_idle_and_starting_workers_now() -> None:
    core = ready_core(2)
    core.retire(0, "old", graceful=False)
    assert take(core) == [StopWorker(0, 1, "old", False)]
    core.worker_exited(0, "old")
    assert take(core) == [StartWorker(0, 2)]  # still wanted: replaced
    core.worker_starting(0)
    core.retire(0, "older")
    assert take(core) == [StopWorker(0, 2, "older", True)]
    core.retire(0, "again")  # already stopping: nothing more
    assert take(core) == []
    core.worker_exited(0, "older")
    assert take(core) == [StartWorker(0, 3)]
    core.retire(0, "stopped")  # a stopped slot: nothing to do
    assert take(core) == [] and core.slots[0].retire_reason is None


def test_retire_a_degraded_worker() -> None:
    core = ready_core(1)
    core.health_result(probe(core, 0).id, ok=False, reason="slow")
    take(core)
    core.retire(0, "degraded too long")
    assert take(core) == [StopWorker(0, 1, "degraded too long", True)]


def test_retire_reason_is_forgotten_by_the_next_worker() -> None:
    core = ready_core(1)
    lease = held(core)
    core.retire(0, "later")
    core.worker_exited(0, "killed", crashed=True)
    assert core.counts().crashes == 1
    core.worker_starting(0)
    assert core.slots[0].retire_reason is None
    core.worker_ready(0, "w0b", 3)
    take(core)
    core.checkin(held(core).id, clean=True)
    assert core.slots[0].state is S.READY
    assert not core.checkin(lease.id, clean=True)


def test_shrink_stops_the_worker_and_restarts_it_on_demand_only() -> None:
    core = ready_core(2)
    core.shrink(1, "idle")
    assert take(core) == [StopWorker(1, 1, "idle", True)]
    assert not core.slots[1].wanted
    core.worker_exited(1, "idle")
    assert take(core) == []  # not restarted
    assert core.counts().stopped == 1
    first = core.request(None)
    assert first.status is W.GRANTED and take(core) == []  # slot 0 serves it
    second = core.request(None)
    assert second.status is W.QUEUED
    assert take(core) == [StartWorker(1, 2)]  # demand: the shrunk slot comes back
    assert core.slots[1].wanted
    third = core.request(None)
    assert third.status is W.QUEUED and take(core) == []  # one on its way already
    core.worker_starting(1)
    core.worker_ready(1, "w1b", 9)
    assert second.status is W.GRANTED and second.slot == 1
    assert take(core) == [Wake(second.id)]


def test_shrink_of_a_busy_worker_waits_for_its_lease() -> None:
    core = ready_core(1)
    lease = held(core)
    core.shrink(0, "idle")
    assert take(core) == [] and core.slots[0].retire_reason == "idle"
    core.checkin(lease.id, clean=True)
    assert take(core) == [StopWorker(0, 1, "idle", True)]
    core.worker_exited(0, "idle")
    assert take(core) == []


def test_lazy_pool_starts_workers_on_demand() -> None:
    core = PoolCore(2, clock=Clock(), strict=True, lazy=True)
    core.start()
    assert take(core) == []
    waiter = core.request(None)
    assert waiter.status is W.QUEUED and take(core) == [StartWorker(0, 1)]
    core.worker_starting(0)
    core.worker_ready(0, "w0", 1)
    assert waiter.status is W.GRANTED and take(core) == [Wake(waiter.id)]


def test_close_fails_queued_waiters_in_order_and_stops_idle_workers() -> None:
    core = ready_core(3)
    lease = held(core)
    core.retire(2, "r")
    core.worker_exited(2, "r")
    core.worker_starting(2)  # slot 2 is STARTING
    other = held(core)
    first, second = core.request(None), core.request("s")
    probe_waiter = core.request(purpose="health", target=0)
    core.take_actions()
    core.close()
    assert core.closing
    assert first.status is second.status is W.FAILED
    assert isinstance(first.error, PoolClosed) and isinstance(second.error, PoolClosed)
    assert probe_waiter.status is W.FAILED
    assert not core.queue and core.counts().waiting == 0
    actions = take(core)
    assert actions == [Wake(first.id), Wake(second.id), Wake(probe_waiter.id),
                       StopWorker(2, 2, "pool closing", True)]
    assert core.slots[2].state is S.STOPPING
    assert all(not slot.wanted for slot in core.slots)
    core.close()  # twice: nothing more
    assert take(core) == []
    for lease_ in (lease, other):
        assert lease_.slot is not None
        core.checkin(lease_.id, clean=True)
    assert {a.slot for a in take(core) if isinstance(a, StopWorker)} == {0, 1}
    late = core.request(None)
    assert late.status is W.FAILED and isinstance(late.error, PoolClosed)
    core.worker_ready(2, "w2b", 3)  # stopped while starting: never served
    assert core.slots[2].state is S.STOPPING
    for index in range(3):
        core.worker_exited(index, "closed")
    assert take(core) == []  # nothing restarts
    assert core.counts().stopped == 3


def test_close_stops_an_idle_and_a_degraded_worker() -> None:
    core = ready_core(2)
    core.health_result(probe(core, 1).id, ok=False, reason="slow")
    take(core)
    core.close()
    assert take(core) == [StopWorker(0, 1, "pool closing", True),
                          StopWorker(1, 1, "pool closing", True)]


def test_worker_ready_after_close_stops_it() -> None:
    core = PoolCore(1, clock=Clock(), strict=True)
    core.start()
    core.worker_starting(0)
    core.take_actions()
    core.closing = True  # the shell closed while the hello was in flight
    core.worker_ready(0, "w0", 1)
    assert take(core) == [StopWorker(0, 1, "pool closing", True)]


def test_worker_dying_with_a_granted_lease_after_close_fails_the_waiter() -> None:
    core = ready_core(1)
    waiter = core.request(None)
    assert waiter.status is W.GRANTED
    core.close()
    core.worker_exited(0, "killed", crashed=True)
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolClosed)
    assert waiter.slot is None and take(core) == []


def test_worker_dying_with_a_granted_lease_requeues_the_waiter() -> None:
    core = ready_core(2)
    waiter = core.request(None)
    assert waiter.status is W.GRANTED and waiter.slot is not None
    dead = waiter.slot
    core.take_actions()
    core.worker_exited(dead, "killed", crashed=True)
    # Back in the line, then served by the other worker at once.
    assert waiter.status is W.GRANTED and waiter.slot == 1 - dead
    assert take(core) == [StartWorker(dead, 2), Wake(waiter.id)]


def test_worker_exit_without_restart_is_not_replaced() -> None:
    core = ready_core(1)
    core.worker_exited(0, "start failed", restart=False, start_failed=True)
    assert take(core) == []
    assert core.counts().start_failures == 1 and not core.slots[0].wanted


# --- queued waiters: expiry, failure, timeouts ---------------------------------------------


def test_expired_waiter_is_told_why() -> None:
    core = ready_core(2)
    held(core)
    held(core)
    waiter = core.request(None, timeout=2.0)
    core.expire(waiter.id)
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolTimeout)
    assert "2 busy, 0 starting, 0 degraded of 2" in str(waiter.error)
    assert take(core) == [Wake(waiter.id)]
    core.expire(waiter.id)  # not queued any more: nothing
    assert take(core) == []


def test_expired_session_waiter_names_its_busy_worker() -> None:
    core = ready_core(2)
    held(core, "s")
    waiter = core.request("s", timeout=1.0)
    assert waiter.status is W.QUEUED
    core.expire(waiter.id)
    assert "session worker busy, affinity=strict" in str(waiter.error)


def test_fail_queued_fails_calls_but_not_probes() -> None:
    core = ready_core(1)
    held(core)
    calls = [core.request(None), core.request(None)]
    health = core.request(purpose="health", target=0)
    core.take_actions()
    core.fail_queued(lambda: RuntimeError("cannot start"))
    assert all(w.status is W.FAILED for w in calls)
    assert calls[0].error is not calls[1].error
    assert health.status is W.QUEUED
    assert take(core) == [Wake(calls[0].id), Wake(calls[1].id)]


# --- the hand-off's verdicts -----------------------------------------------------------


class Script:
    """A checkout policy answering from a list, then Ok; records who it was asked about."""

    def __init__(self, *verdicts: Verdict) -> None:
        self.verdicts = list(verdicts)
        self.asked: list[tuple[int, int]] = []

    def __call__(self, slot: Slot, waiter: Waiter) -> Verdict:
        self.asked.append((slot.index, waiter.id))
        return self.verdicts.pop(0) if self.verdicts else Verdict(Ok())


def test_removed_worker_is_stopped_and_the_waiter_offered_the_next() -> None:
    script = Script(Verdict(Remove("process_dead"), by_policy=False))
    core = ready_core(2, vet=script)
    waiter = core.request(None)
    assert waiter.status is W.GRANTED and waiter.slot == 1
    assert script.asked == [(0, waiter.id), (1, waiter.id)]
    assert take(core) == [StopWorker(0, 1, "process_dead", False)]
    assert waiter.removals is not None
    assert (waiter.removals.total, waiter.removals.by_policy,
            waiter.removals.last) == (1, 0, "process_dead")


def test_every_worker_removed_times_out_saying_who_removed_them() -> None:
    for by_policy, who in ((True, "the checkout policy removed"),
                           (False, "the hand-off check or the checkout policy removed")):
        script = Script(Verdict(Remove("a"), by_policy=True),
                        Verdict(Remove("b"), by_policy=by_policy))
        core = ready_core(2, vet=script)
        waiter = core.request(None, timeout=1.0)
        assert waiter.status is W.QUEUED
        assert waiter.removals is not None
        assert (waiter.removals.total, waiter.removals.by_policy) == (2, 1 + by_policy)
        core.expire(waiter.id)
        assert isinstance(waiter.error, PoolTimeout)
        assert waiter.error.reason == \
            f"{who} every worker offered to this checkout (2 removed; the last: b)"


def test_skip_fails_the_waiter_and_keeps_the_worker() -> None:
    error = RuntimeError("not now")
    core = ready_core(1, vet=Script(Verdict(Skip(error))))
    waiter = core.request(None)
    assert waiter.status is W.FAILED and waiter.error is error
    assert core.slots[0].state is S.READY and take(core) == []
    assert core.request(None).status is W.GRANTED


def test_skip_of_a_queued_waiter_wakes_it() -> None:
    script = Script()
    core = ready_core(1, vet=script)
    lease = held(core)
    waiter = core.request(None)
    core.take_actions()
    script.verdicts.append(Verdict(Skip(RuntimeError("no"))))
    core.checkin(lease.id, clean=True)
    assert waiter.status is W.FAILED and take(core) == [Wake(waiter.id)]


def test_contract_violation_is_reported_with_the_slot() -> None:
    violation = ContractViolation(callback="P.on_checkout", value=42, expected="Ok()")
    core = ready_core(2, vet=Script(Verdict(Remove("contract"), violation=violation)))
    core.request(None)
    [event] = events(core.take_actions(), CONTRACT_VIOLATION)
    assert event.metadata == {"callback": "P.on_checkout", "value": "42", "slot": 0}


def test_health_probes_skip_the_checkout_policy() -> None:
    script = Script(Verdict(Remove("never asked")))
    core = ready_core(1, vet=script)
    probe(core, 0)
    assert script.asked == []


# --- refusals and affinity -------------------------------------------------------------


def test_saturated_queue_refuses_calls_not_probes() -> None:
    core = ready_core(1, max_waiters=2)
    held(core)
    queued = [core.request(None), core.request(None)]
    assert all(w.status is W.QUEUED for w in queued)
    refused = core.request(None)
    assert refused.status is W.FAILED and isinstance(refused.error, PoolSaturated)
    assert refused.error.max_waiters == 2
    assert core.request(purpose="health", target=0).status is W.QUEUED
    core.cancel(refused.id)
    assert refused.id not in core.waiters
    take(core)


def test_fail_fast_refuses_a_session_whose_worker_is_busy() -> None:
    core = ready_core(2, affinity="fail_fast")
    lease = held(core, "s")
    busy = core.request("s")
    assert busy.status is W.FAILED and isinstance(busy.error, WorkerBusy)
    assert busy.error.worker_id == "w0"
    core.checkin(lease.id, clean=True)
    assert core.request("s").status is W.GRANTED
    take(core)


def test_fail_fast_refuses_a_session_whose_worker_is_draining() -> None:
    core = ready_core(2, affinity="fail_fast")
    drain(core, held(core, "s"))
    assert isinstance(core.request("s").error, WorkerBusy)


def test_strict_session_waits_for_its_worker_hint_takes_another() -> None:
    strict = ready_core(2, affinity="strict")
    held(strict, "s")
    assert strict.request("s").status is W.QUEUED
    hint = ready_core(2, affinity="hint")
    held(hint, "s")
    other = hint.request("s")
    assert other.status is W.GRANTED and other.slot == 1
    assert hint.bindings["s"].slot == 0  # the binding stays with its first worker
    take(strict)
    take(hint)


def test_new_session_goes_to_the_worker_with_fewest_sessions() -> None:
    core = ready_core(3)
    core.checkin(held(core, "a").id, clean=True)
    assert core.slots[0].sessions == {"a"}
    core.take_actions()
    clock_of(core).now = 1.0
    second = held(core, "b")
    assert second.slot == 1  # not slot 0, the warmest: it already holds a session
    [bind] = [e for e in events(core.take_actions(), SESSION_BIND)]
    assert bind.metadata == {"session": "b", "slot": 1, "worker_id": "w1"}
    anonymous = held(core)
    assert anonymous.slot == 0  # anonymous calls take the warmest


def test_lost_session_is_reported_once_then_starts_afresh() -> None:
    core = ready_core(2)
    core.checkin(held(core, "s").id, clean=True)
    core.worker_exited(0, "oom killed", crashed=True)
    lost = core.request("s")
    assert lost.status is W.FAILED and isinstance(lost.error, SessionLost)
    assert lost.error.reason == "oom killed" and lost.error.worker_id == "w0"
    again = core.request("s")
    assert again.status is W.GRANTED and again.slot == 1
    take(core)


def test_queued_session_waiter_learns_its_worker_died() -> None:
    core = ready_core(1)
    lease = held(core, "s")
    first, second = core.request("s"), core.request("s")
    core.take_actions()
    core.worker_exited(0, "segfault", crashed=True)
    assert first.status is W.FAILED and isinstance(first.error, SessionLost)
    assert second.status is W.QUEUED  # starts afresh, on any worker
    assert "s" not in core.bindings
    actions = core.take_actions()
    [lost_event] = events(actions, SESSION_LOST)
    assert lost_event.metadata == {"session": "s", "slot": 0, "reason": "segfault"}
    assert [a for a in actions if not isinstance(a, Emit)] == [Wake(first.id), StartWorker(0, 2)]
    assert not core.checkin(lease.id, clean=True)
    core.check_invariants()


def test_unbind_frees_a_strict_waiter_for_any_worker() -> None:
    core = ready_core(2)
    lease = held(core, "s")
    held(core)
    waiter = core.request("s")
    assert waiter.status is W.QUEUED
    core.checkin(lease.id, clean=False)  # slot 0 stops; the session's state lives on it
    core.take_actions()
    assert core.unbind("s") == 0  # still there while its worker stops
    assert core.unbind("s") is None
    assert waiter.status is W.QUEUED
    core.worker_exited(0, "dirty")  # no binding any more: nothing lost, nobody failed
    assert waiter.status is W.QUEUED
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 4)
    assert waiter.status is W.GRANTED and waiter.slot == 0
    take(core)


def test_unbind_of_a_live_session_names_its_slot() -> None:
    core = ready_core(2)
    other = held(core)
    lease = held(core, "s")
    assert lease.slot == 1
    core.checkin(lease.id, clean=True)
    assert core.unbind("s") == 1
    assert core.slots[1].sessions == set() and "s" not in core.bindings
    core.checkin(other.id, clean=True)
    take(core)


def test_session_waiter_queued_behind_its_worker_is_rerouted_by_unbind() -> None:
    core = ready_core(2)
    bound = held(core, "s")
    other = held(core)
    waiter = core.request("s")
    core.checkin(other.id, clean=True)
    assert waiter.status is W.QUEUED  # strict: not the other worker
    core.take_actions()
    assert core.unbind("s") == 0
    assert waiter.status is W.GRANTED and waiter.slot == 1
    assert take(core) == [Wake(waiter.id)]
    assert core.bindings["s"].slot == 1
    core.checkin(bound.id, clean=True)


def test_expired_sessions_skip_leased_and_lost_ones() -> None:
    core = ready_core(3)
    clock = clock_of(core)
    core.checkin(held(core, "idle").id, clean=True)
    busy = held(core, "busy")
    core.checkin(held(core, "lost").id, clean=True)
    core.worker_exited(2, "killed")
    clock.now = 100.0
    assert core.expired_sessions(50.0) == ["idle"]
    core.checkin(busy.id, clean=True)
    assert core.expired_sessions(50.0) == ["idle"]  # checked in just now
    take(core)


# --- counts and telemetry -------------------------------------------------------------------


def test_counts_follow_every_state() -> None:
    core = ready_core(4)
    lease = held(core, "s")
    drain(core, held(core))
    core.health_result(probe(core, 2).id, ok=False, reason="slow")
    core.retire(3, "old")
    waiter = core.request(None)
    counts = core.counts()
    assert counts == CoreCounts(size=4, ready=0, busy=1, starting=0, degraded=1, stopping=1,
                                stopped=0, waiting=1, sessions=1, restarts=0, crashes=0,
                                start_failures=0, leased=1, draining=1)
    core.worker_exited(3, "old")
    core.worker_starting(3)
    counts = core.counts()
    assert (counts.starting, counts.stopping, counts.restarts) == (1, 0, 1)
    assert lease.status is W.HELD and waiter.status is W.QUEUED
    take(core)


def test_transitions_are_reported_with_their_duration() -> None:
    core = ready_core(1)
    clock = clock_of(core)
    clock.now = 2.0
    lease = held(core)
    clock.now = 5.0
    core.take_actions()
    core.checkin(lease.id, clean=True)
    [event] = events(core.take_actions(), WORKER_TRANSITION)
    assert event.measurements == {"duration": 3.0}
    assert event.metadata == {"slot": 0, "worker_id": "w0", "old": "busy", "new": "ready",
                              "reason": "checked in"}


def test_no_events_when_telemetry_is_off() -> None:
    core = PoolCore(1, clock=Clock(), strict=True, telemetry_enabled=lambda: False)
    core.start()
    core.worker_starting(0)
    core.worker_ready(0, "w0", 1)
    core.checkin(held(core, "s").id, clean=False)
    core.worker_exited(0, "dirty")
    assert not [a for a in core.take_actions() if isinstance(a, Emit)]
    assert core.slots[0].lifecycle.history[-1].new is S.STOPPED


def test_unbind_of_a_lost_session_names_no_slot() -> None:
    core = ready_core(1)
    core.checkin(held(core, "s").id, clean=True)
    core.worker_exited(0, "killed", crashed=True)
    assert core.bindings["s"].lost == "killed"
    assert core.unbind("s") is None  # same worker generation, but its state is gone
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 2)
    core.checkin(held(core, "s").id, clean=True)
    core.worker_exited(0, "killed", crashed=True)
    core.worker_starting(0)
    core.worker_ready(0, "w0c", 3)
    assert core.unbind("s") is None and "s" not in core.bindings
    take(core)


def test_defaults_queue_a_thousand_and_replace_after_three_failed_probes() -> None:
    core = ready_core(1)
    held(core)
    queued = [core.request(None) for _ in range(1000)]
    assert queued[-1].status is W.QUEUED
    assert isinstance(core.request(None).error, PoolSaturated)
    fresh = ready_core(1)
    for _ in range(2):
        fresh.health_result(probe(fresh, 0).id, ok=False, reason="slow")
    assert fresh.slots[0].state is S.DEGRADED
    fresh.health_result(probe(fresh, 0).id, ok=False, reason="slow")
    assert fresh.slots[0].state is S.STOPPING


# --- what each error says ----------------------------------------------------------------


def test_errors_name_the_pool_and_the_waiter() -> None:
    core = ready_core(1, name="p", max_waiters=1, affinity="fail_fast")
    clock = clock_of(core)
    clock.now = 10.0
    lease = held(core, "s")
    busy = core.request("s")
    assert isinstance(busy.error, WorkerBusy)
    assert (busy.error.session, busy.error.worker_id, busy.error.pid) == ("s", "w0", 0)
    queued = core.request(None, timeout=4.0)
    assert queued.status is W.QUEUED
    saturated = core.request(None)
    assert isinstance(saturated.error, PoolSaturated)
    assert (saturated.error.max_waiters, saturated.error.pool) == (1, "p")
    core.expire(queued.id)
    error = queued.error
    assert isinstance(error, PoolTimeout)
    assert (error.timeout, error.session, error.pool, error.waiting) == (4.0, None, "p", 1)
    assert core.has_actions()
    take(core)
    assert not core.has_actions()
    later = core.request("t", timeout=1.0)  # a new session: not refused, queued
    assert later.status is W.QUEUED
    core.expire(later.id)
    assert isinstance(later.error, PoolTimeout)
    assert (later.error.session, later.error.waiting) == ("t", 1)  # itself
    assert "1 busy, 0 starting, 0 degraded of 1" in str(later.error)  # no worker of its own
    core.close()
    closed = core.request(None)
    assert isinstance(closed.error, PoolClosed) and closed.error.pool == "p"
    core.checkin(lease.id, clean=True)


def test_waiters_failed_by_close_name_the_pool() -> None:
    core = ready_core(1, name="p")
    lease = held(core)
    waiter = core.request(None)
    core.close()
    assert isinstance(waiter.error, PoolClosed) and waiter.error.pool == "p"
    granted_core = ready_core(1, name="q")
    granted = granted_core.request(None)
    granted_core.close()
    granted_core.worker_exited(0, "killed")
    assert isinstance(granted.error, PoolClosed) and granted.error.pool == "q"
    assert granted.slot is None and granted.generation is None
    core.checkin(lease.id, clean=True)


def test_expire_of_a_waiter_without_deadline_or_unknown_is_harmless() -> None:
    core = ready_core(1)
    held(core)
    waiter = core.request(None)
    core.expire(12345)
    assert waiter.status is W.QUEUED
    core.expire(waiter.id)  # the shell never does this; the timeout reads 0
    assert isinstance(waiter.error, PoolTimeout) and waiter.error.timeout == 0.0


def test_session_lost_with_no_reason_says_worker_died() -> None:
    core = ready_core(2)
    core.checkin(held(core, "s").id, clean=True)
    core.worker_exited(0, "")
    lost = core.request("s")
    assert isinstance(lost.error, SessionLost)
    assert (lost.error.session, lost.error.worker_id, lost.error.reason) == \
        ("s", "w0", "worker died")


def test_worker_exit_forgets_the_process_and_counts_only_crashes() -> None:
    core = ready_core(2)
    core.worker_exited(0, "stopped on request")
    assert last_reason(core, 0) == (S.STOPPED, "stopped on request")
    assert (core.slots[0].worker_id, core.slots[0].pid) == (None, None)
    counts = core.counts()
    assert (counts.crashes, counts.start_failures) == (0, 0)
    core.worker_exited(1, "segfault", crashed=True)
    core.worker_starting(0)
    core.worker_exited(0, "bad hello", start_failed=True)
    core.worker_starting(1)
    core.worker_exited(1, "segfault", crashed=True)
    counts = core.counts()
    assert (counts.crashes, counts.start_failures) == (2, 1)
    take(core)


def test_reject_grant_stops_the_worker_at_once_and_requeues() -> None:
    core = ready_core(1)
    waiter = core.request(None)
    core.take_actions()
    core.reject_grant(waiter.id, "process_dead at receipt")
    assert take(core) == [StopWorker(0, 1, "process_dead at receipt", False)]
    assert waiter.status is W.QUEUED
    assert (waiter.slot, waiter.generation) == (None, None)
    core.worker_exited(0, "process_dead")
    core.worker_starting(0)
    core.worker_ready(0, "w0b", 1)
    assert waiter.status is W.GRANTED and waiter.generation == 2


def test_reject_grant_after_close_fails_the_waiter_and_wakes_nobody() -> None:
    core = ready_core(1, name="p")
    waiter = core.request(None)
    core.close()
    core.take_actions()
    core.reject_grant(waiter.id, "dead")
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolClosed)
    assert waiter.error.pool == "p"
    assert (waiter.slot, waiter.generation) == (None, None)
    assert take(core) == [StopWorker(0, 1, "dead", False)]


def test_reject_grant_of_a_held_or_unknown_waiter_is_ignored() -> None:
    core = ready_core(1)
    core.reject_grant(12345, "unknown")
    lease = held(core)
    core.take_actions()
    core.reject_grant(lease.id, "too late: it holds the lease")
    assert lease.status is W.HELD and core.slots[0].state is S.BUSY
    assert take(core) == []
    core.cancel(lease.id)  # a held lease is returned by checkin, not cancel
    assert lease.status is W.HELD and core.checkin(lease.id, clean=True)


def test_cancelled_queued_waiter_is_done_and_forgotten() -> None:
    core = ready_core(1)
    lease = held(core)
    waiter = core.request(None)
    core.cancel(waiter.id)
    assert waiter.status is W.DONE and waiter.id not in core.waiters
    core.cancel(waiter.id)
    core.checkin(lease.id, clean=True)
    assert core.slots[0].state is S.READY and take(core) == []


def test_health_failure_without_a_reason() -> None:
    core = ready_core(1)
    core.health_result(probe(core, 0).id, ok=False)
    assert last_reason(core, 0) == (S.DEGRADED, "health check failed: ")


def test_shrunk_slot_stays_consistent_through_close() -> None:
    core = ready_core(2)
    core.shrink(1, "idle")
    core.worker_exited(1, "idle")
    take(core)
    core.close()
    take(core)
    core.worker_exited(0, "closed")
    assert take(core) == [] and core.counts().stopped == 2


def test_a_stale_offer_never_holds_back_a_waiter() -> None:
    """A worker freed while a session waits for it goes to an earlier anonymous
    waiter; when another worker frees, the next anonymous waiter gets it (the
    session's waiter, still waiting for its own busy worker, is not in the way)."""
    core = ready_core(2)
    bound = held(core, "s")
    other = held(core)
    assert (bound.slot, other.slot) == (0, 1)
    first, session_waiter, second = core.request(None), core.request("s"), core.request(None)
    core.checkin(bound.id, clean=True)
    assert first.status is W.GRANTED and first.slot == 0
    assert session_waiter.status is W.QUEUED
    core.checkin(other.id, clean=True)
    assert second.status is W.GRANTED and second.slot == 1
    assert session_waiter.status is W.QUEUED
    take(core)


# --- check_invariants catches what it claims to --------------------------------------------


def corrupt_free_token(core: PoolCore) -> None:
    core.slots[0].free_token = 0  # a READY, unleased worker no longer offered


def corrupt_queue(core: PoolCore) -> None:
    core.queue[999] = Waiter(999, None, None, 0.0)  # queued behind the core's back


def corrupt_probe_lease(core: PoolCore) -> None:
    core.waiters[999] = Waiter(999, None, None, 0.0, "health", 0, W.GRANTED, 0, 1)
    core.slots[0].lease = 999  # not counted as leased


def corrupt_call_lease(core: PoolCore) -> None:
    core.waiters[999] = Waiter(999, None, None, 0.0, "call", None, W.GRANTED, 0, 1)
    core.slots[0].lease = 999  # a READY worker leased to a call


def corrupt_served_and_queued(core: PoolCore) -> None:
    lease = core.request(None)  # granted; a queued twin under its id
    core.queue[lease.id] = Waiter(lease.id, None, None, 0.0)


def corrupt_capacity(core: PoolCore) -> None:
    core.state_counts[S.STARTING] += 1  # three live workers counted in a pool of two


@pytest.mark.parametrize(("corrupt", "message"), [
    (corrupt_free_token, "free slots drifted"),
    (corrupt_queue, "unmet demand drifted"),
    (corrupt_probe_lease, "leased drifted"),  # a probe's lease on a READY slot is allowed
    (corrupt_call_lease, "leased slot 0 is WorkerState.READY"),
    (corrupt_served_and_queued, "waiter both queued and served"),
    (corrupt_capacity, ""),  # the capacity check comes first, bare
])
def test_check_invariants_names_each_corruption(corrupt: Callable[[PoolCore], None],
                                                message: str) -> None:
    core = ready_core(2)
    core.check_invariants()
    corrupt(core)
    with pytest.raises(AssertionError) as raised:
        core.check_invariants()
    assert str(raised.value) == message


# --- capacity on demand, lease counts, check-in's transitions ----------------------------


def last_moves(core: PoolCore, index: int, count: int) -> list[tuple[WorkerState, str]]:
    return [(t.new, t.reason) for t in core.slots[index].lifecycle.history][-count:]


def test_lazy_pool_starts_one_worker_per_queued_call() -> None:
    core = PoolCore(3, clock=Clock(), strict=True, lazy=True)
    core.start()
    first = core.request(None)
    assert take(core) == [StartWorker(0, 1)]
    second = core.request(None)
    assert take(core) == [StartWorker(1, 1)]  # one on its way already: one more
    core.worker_starting(0)
    core.worker_starting(1)
    core.cancel(second.id)
    third = core.request(None)
    assert take(core) == []  # two waiters, two workers coming
    core.worker_ready(0, "w0", 1)
    assert first.status is W.GRANTED and third.status is W.QUEUED
    take(core)


def test_lazy_pool_starts_as_many_workers_as_calls_queued_at_once() -> None:
    core = PoolCore(3, clock=Clock(), strict=True, lazy=True)
    core.start()
    core.take_actions()
    core.worker_starting(0)  # started by hand: counts as coming
    core.worker_ready(0, "w0", 1)
    lease = held(core)
    waiters = [core.request(None), core.request(None)]
    assert all(w.status is W.QUEUED for w in waiters)
    assert take(core) == [StartWorker(1, 1), StartWorker(2, 1)]
    core.checkin(lease.id, clean=True)


def test_eager_pool_does_not_start_a_worker_twice_under_demand() -> None:
    core = ready_core(2)
    lease = held(core)
    core.worker_exited(1, "killed", crashed=True)
    assert take(core) == [StartWorker(1, 2)]
    core.request(None)
    core.request(None)
    assert take(core) == []  # the restart on its way is the only one
    core.checkin(lease.id, clean=True)


def test_leases_granted_counts_calls_not_probes() -> None:
    core = ready_core(1)
    for _ in range(2):
        lease = held(core)
        core.checkin(lease.id, clean=True)
    core.health_result(probe(core, 0).id, ok=True)
    slot = core.slots[0]
    assert (slot.leases_granted, slot.calls) == (2, 0)  # no calls reported at check-in


def test_checkin_moves_through_ready_before_each_stop() -> None:
    core = ready_core(3, max_calls_per_worker=1)
    dirty, retired, recycled = held(core), held(core), held(core)
    core.retire(1, "retired")
    core.checkin(dirty.id, clean=False)
    core.checkin(retired.id, clean=True)
    core.checkin(recycled.id, clean=True, calls=1)
    assert last_moves(core, 0, 2) == [(S.READY, "checked in"),
                                      (S.STOPPING, "dirty after its lease")]
    assert last_moves(core, 1, 2) == [(S.READY, "checked in"), (S.STOPPING, "retired")]
    assert last_moves(core, 2, 2) == [(S.READY, "checked in"),
                                      (S.STOPPING, "recycled after 1 calls")]
    closing = ready_core(1)
    lease = held(closing)
    closing.close()
    closing.checkin(lease.id, clean=True)
    assert last_moves(closing, 0, 2) == [(S.READY, "checked in"),
                                         (S.STOPPING, "pool closing")]
    take(core)
    take(closing)


# --- start-up, deadlines, hint affinity, session loss order ------------------------------------


def test_workers_start_spawn_then_hello_and_restarts_are_counted() -> None:
    core = ready_core(1)
    assert last_moves(core, 0, 2) == [(S.STARTING, "spawn"), (S.READY, "hello received")]
    for generation in (2, 3):
        core.worker_exited(0, "recycled")
        assert core.worker_starting(0) == generation
        core.worker_ready(0, f"w0-{generation}", generation)
    assert core.counts().restarts == 2


def test_nothing_starts_after_close() -> None:
    core = PoolCore(2, clock=Clock(), strict=True)
    core.close()
    core.start()
    assert take(core) == []


def test_a_waiter_taken_back_at_receipt_counts_as_demand() -> None:
    core = PoolCore(4, clock=Clock(), strict=True, lazy=True)
    core.start()
    core.worker_starting(0)  # started by hand, not on demand
    core.worker_ready(0, "w0", 1)
    first = core.request(None)
    assert first.status is W.GRANTED and take(core) == []
    core.reject_grant(first.id, "process_dead at receipt")
    assert first.status is W.QUEUED
    take(core)
    second = core.request(None)
    assert second.status is W.QUEUED
    assert take(core) == [StartWorker(1, 1), StartWorker(2, 1)]  # one for each


def test_a_waiter_is_not_served_at_its_deadline() -> None:
    core = ready_core(1)
    clock = clock_of(core)
    lease = held(core)
    waiter = core.request(None, timeout=1.0)
    clock.now = 1.0  # the timer has not fired yet; the worker frees at the deadline
    core.checkin(lease.id, clean=True)
    assert waiter.status is W.FAILED and isinstance(waiter.error, PoolTimeout)
    assert core.slots[0].state is S.READY


def test_hint_session_waiter_takes_the_first_worker_to_free() -> None:
    core = ready_core(2, affinity="hint")
    bound = held(core, "s")
    other = held(core)
    waiter = core.request("s")
    assert waiter.status is W.QUEUED
    core.checkin(other.id, clean=True)
    assert waiter.status is W.GRANTED and waiter.slot == 1
    core.checkin(bound.id, clean=True)
    take(core)


def test_sessions_lost_together_are_told_in_arrival_order() -> None:
    core = ready_core(1)
    names = ["a", "b", "c", "d", "e", "f"]
    for name in names:
        core.checkin(held(core, name).id, clean=True)
    lease = held(core)
    waiters = [core.request(name) for name in reversed(names)]
    core.take_actions()
    core.worker_exited(0, "killed", crashed=True)
    assert all(isinstance(w.error, SessionLost) for w in waiters)
    wakes = [a for a in core.take_actions() if isinstance(a, Wake)]
    assert wakes == [Wake(w.id) for w in waiters]  # earliest first, whatever the set order
    assert not core.checkin(lease.id, clean=True)


def test_hint_waiter_requeued_after_its_session_was_lost_learns_of_it() -> None:
    """affinity='hint': a session waiter served by another worker (its own was
    busy) whose grant is taken back after its own worker died must get
    SessionLost, not the dead worker's replacement as if the state were there
    (found by the machine's random profile)."""
    core = hint_core(set())
    first = core.request("a")
    assert first.status is W.GRANTED
    core.receive(first.id)
    own = first.slot
    assert own is not None
    second = core.request("a")  # own worker busy: hint takes the other one
    assert second.status is W.GRANTED and second.slot == 1 - own
    core.worker_exited(own, "crashed", crashed=True)  # the session's state is gone
    core.reject_grant(second.id, "process_dead at receipt")  # and so is the fallback
    if second.status is W.QUEUED:  # no worker free: served when the replacement is up
        core.worker_starting(own)
        core.worker_ready(own, "w-new", 9)
    assert second.status is W.FAILED and isinstance(second.error, SessionLost), second


def test_a_session_waiter_that_finds_its_own_worker_dead_at_receipt_reports_the_loss() -> None:
    """The re-check at receipt is part of the hand-off: the waiter that finds its
    session's worker dead there is the first to observe the loss, in every
    affinity, and is told at once (not moved silently to another worker under
    'hint', not kept waiting for the exit under 'strict')."""
    for affinity in ("strict", "fail_fast", "hint"):
        core = ready_core(2, affinity=affinity)
        waiter = core.request("a")
        assert waiter.status is W.GRANTED
        own = waiter.slot
        core.reject_grant(waiter.id, "process_dead at receipt")
        assert waiter.status is W.FAILED and isinstance(waiter.error, SessionLost), \
            (affinity, waiter)
        assert "died before the call was sent" in str(waiter.error)
        assert waiter.slot is None and waiter.generation is None  # it holds no worker
        [lost] = events(core.take_actions(), SESSION_LOST)
        assert lost.metadata == {"session": "a", "slot": own,
                                 "reason": "process_dead at receipt"}, lost.metadata
        assert "a" not in core.bindings
        assert core.slots[own].state is S.STOPPING  # type: ignore[index]
        again = core.request("a")  # a fresh state, on the live worker
        assert again.status is W.GRANTED and again.slot == 1 - own  # type: ignore[operator]
