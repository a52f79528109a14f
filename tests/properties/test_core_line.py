"""The core machine narrowed to the waiting line (issue 15): the order of
service, and the unit tests of that order. See ``served_in_order`` in
tests/properties/test_core_machine.py for the promise the model checks.

A file of its own so that mutation testing of the core can run these (a few
seconds) rather than the whole core machine.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize

from engine.pool.core import Waiter, WaiterStatus
from engine.testing.profiles import scaled
from tests.properties.test_core_machine import CoreMachine, ready_core

pytestmark = pytest.mark.layer1

W = WaiterStatus


class LineMachine(CoreMachine):
    """The same machine and model, narrowed to the waiting line: only the rules
    that queue, serve, take back and re-serve waiters, so that the orders that
    matter (an anonymous waiter and a session's, both eligible for the worker
    that frees; a grant taken back, then another worker freeing) come up in a
    few steps instead of among twenty other rules."""

    @initialize(size=st.integers(1, 2), max_waiters=st.integers(3, 8))
    def setup(self, size: int, max_waiters: int) -> None:  # type: ignore[override]
        # Strict affinity: the only one where a waiter may take one worker only
        # (fail_fast refuses instead of queueing, hint takes any worker).
        CoreMachine.setup(self, size, "strict", False, max_waiters, None, True)

    # Overridden without @rule: not rules here.
    def receive_any(self, waiter: Waiter) -> None: ...
    def checkin_abandoned(self, pick: int, remove: bool) -> None: ...
    def drained(self, pick: int, ok: bool) -> None: ...
    def worker_starting(self, pick: int) -> None:  # still used by start_and_ready
        CoreMachine.worker_starting(self, pick)
    def worker_ready(self, pick: int) -> None:  # still used by start_and_ready
        CoreMachine.worker_ready(self, pick)
    def policy_skips_next(self, dice: int) -> None: ...
    def retire(self, pick: int, dice: int) -> None: ...
    def health_probe(self, pick: int) -> Waiter:  # type: ignore[override]
        raise AssertionError("not a rule here")
    def health_result(self, probe: Waiter, ok: bool) -> None: ...
    def close(self, dice: int) -> None: ...
    def worker_dies_unnoticed(self, pick: int) -> None: ...


LineMachine.TestCase.settings = scaled(max_examples=300, stateful_step_count=25)
TestLineMachine = LineMachine.TestCase


def test_requeued_waiter_keeps_its_place() -> None:
    """A waiter whose grant is taken back (its worker died before it took it)
    is served before the waiters that arrived after it."""
    core = ready_core(2)
    held = core.request(None)
    core.receive(held.id)
    first = core.request(None)  # granted slot 1, not taken yet
    assert first.status is W.GRANTED
    second, third = core.request(None), core.request(None)
    assert second.status is third.status is W.QUEUED
    core.reject_grant(first.id, "process_dead at receipt")  # slot 1 stops
    assert first.status is W.QUEUED
    core.checkin(held.id, clean=True)  # slot 0 free: it goes to `first`, not `second`
    assert first.status is W.GRANTED and first.slot == 0
    assert [w.id for w in core.queued_in_order()] == [second.id, third.id]


def test_session_waiter_ahead_of_later_anonymous_ones() -> None:
    """FIFO among waiters eligible for the same worker: a session waiter queued
    for its (busy) worker is served before anonymous waiters that arrived later,
    and does not hold back anonymous waiters when another worker frees."""
    core = ready_core(2)
    bound = core.request("s")
    core.receive(bound.id)
    other = core.request(None)
    core.receive(other.id)
    session_waiter = core.request("s")  # waits for slot `bound.slot`
    anonymous = core.request(None)
    assert bound.slot is not None and other.slot is not None
    core.checkin(other.id, clean=True)  # not the session's worker: the anonymous one
    assert anonymous.status is W.GRANTED and session_waiter.status is W.QUEUED
    later = core.request(None)
    core.checkin(bound.id, clean=True)  # the session's worker: its waiter first
    assert session_waiter.status is W.GRANTED and session_waiter.slot == bound.slot
    assert later.status is W.QUEUED


def test_anonymous_waiter_ahead_of_later_session_waiter() -> None:
    """FIFO among waiters eligible for the same worker, the other way round: an
    anonymous waiter that arrived first takes the session's worker when it
    frees, before the session's own later waiter."""
    core = ready_core(1)
    bound = core.request("s")
    core.receive(bound.id)
    anonymous = core.request(None, 5.0)
    session_waiter = core.request("s", 5.0)
    core.checkin(bound.id, clean=True)
    assert anonymous.status is W.GRANTED and session_waiter.status is W.QUEUED

