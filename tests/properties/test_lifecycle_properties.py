"""Layer 1: the worker lifecycle transition table (issue 4)."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.pool.lifecycle import (
    TRANSITIONS,
    InvalidTransition,
    Lifecycle,
    WorkerState,
    is_allowed,
)

pytestmark = pytest.mark.layer1

states = st.sampled_from(list(WorkerState))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@given(st.lists(states, max_size=60))
def test_strict_lifecycle_accepts_exactly_the_table(sequence: list[WorkerState]) -> None:
    lifecycle = Lifecycle("w", clock=FakeClock(), strict=True, history=1000)
    accepted = 0
    for new in sequence:
        old = lifecycle.state
        if old is new:
            assert lifecycle.move(new, "same") is None
            continue
        if (old, new) in TRANSITIONS:
            transition = lifecycle.move(new, "step")
            assert transition is not None
            assert (transition.old, transition.new) == (old, new)
            assert transition.duration > 0
            accepted += 1
        else:
            with pytest.raises(InvalidTransition):
                lifecycle.move(new, "step")
            assert lifecycle.state is old
    assert len(lifecycle.history) == accepted == lifecycle.accepted


@given(st.lists(states, max_size=60))
def test_lenient_lifecycle_logs_but_never_raises(sequence: list[WorkerState]) -> None:
    lifecycle = Lifecycle("w", clock=FakeClock(), strict=False, history=1000)
    rejected = 0
    for new in sequence:
        if lifecycle.state is not new and not is_allowed(lifecycle.state, new):
            rejected += 1
        lifecycle.move(new, "step")
        assert lifecycle.state is new
    assert lifecycle.rejected == rejected


@given(st.lists(states, min_size=1, max_size=200))
def test_history_is_bounded(sequence: list[WorkerState]) -> None:
    lifecycle = Lifecycle("w", clock=FakeClock(), history=8)
    for new in sequence:
        lifecycle.move(new, "step")
    assert len(lifecycle.history) <= 8


def test_table_shape() -> None:
    s = WorkerState
    # The design's arrows.
    for pair in [(s.STARTING, s.READY), (s.READY, s.BUSY), (s.BUSY, s.READY),
                 (s.READY, s.DEGRADED), (s.DEGRADED, s.READY), (s.DEGRADED, s.STOPPING),
                 (s.STOPPING, s.STOPPED), (s.STOPPED, s.STARTING)]:
        assert pair in TRANSITIONS
    # Nothing leaves STOPPED except a rebuild, and nothing skips STARTING.
    for new in WorkerState:
        if new is not s.STARTING:
            assert (s.STOPPED, new) not in TRANSITIONS
    for old, new in itertools.product([s.STOPPED, s.STOPPING], [s.READY, s.BUSY]):
        assert (old, new) not in TRANSITIONS


class SetClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_transitions_record_when_and_how_long() -> None:
    clock = SetClock()
    lifecycle = Lifecycle("w-7", clock=clock)
    assert lifecycle.name == "w-7" and lifecycle.state is WorkerState.STOPPED
    clock.now = 102.5
    assert lifecycle.time_in_state() == 2.5
    first = lifecycle.move(WorkerState.STARTING, "spawn")
    assert first == (WorkerState.STOPPED, WorkerState.STARTING, "spawn", 102.5, 2.5)
    clock.now = 110.0
    # `now` given by the caller is used instead of a clock read.
    second = lifecycle.move(WorkerState.READY, "hello", now=104.0)
    assert second == (WorkerState.STARTING, WorkerState.READY, "hello", 104.0, 1.5)
    assert lifecycle.time_in_state() == 6.0
    assert list(lifecycle.history) == [first, second]
    assert (lifecycle.accepted, lifecycle.rejected) == (2, 0)


def test_history_keeps_the_last_32_transitions_by_default() -> None:
    lifecycle = Lifecycle("w", clock=FakeClock())
    moves = [lifecycle.move(state, f"step {n}")
             for n, state in enumerate([WorkerState.STARTING, WorkerState.READY]
                                       + [WorkerState.BUSY, WorkerState.READY] * 20)]
    assert list(lifecycle.history) == moves[-32:]


def test_an_invalid_transition_names_the_worker_and_both_states(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = ("invalid worker transition stopped -> busy for w-3 (lease granted); "
               "this is a bug in engine")
    strict = Lifecycle("w-3", clock=FakeClock(), strict=True)
    with pytest.raises(InvalidTransition) as info:
        strict.move(WorkerState.BUSY, "lease granted")
    assert str(info.value) == message
    assert (info.value.old, info.value.new) == (WorkerState.STOPPED, WorkerState.BUSY)
    assert (strict.state, strict.rejected, len(strict.history)) == (WorkerState.STOPPED, 1, 0)

    lenient = Lifecycle("w-3", clock=FakeClock())
    with caplog.at_level(logging.ERROR, logger="engine.lifecycle"):
        transition = lenient.move(WorkerState.BUSY, "lease granted")
    assert [r.getMessage() for r in caplog.records] == [message]
    assert transition is not None and list(lenient.history) == [transition]
    assert (lenient.state, lenient.rejected, lenient.accepted) == (WorkerState.BUSY, 1, 1)
