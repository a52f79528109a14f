"""Layer 1: the worker lifecycle transition table (issue 4)."""

from __future__ import annotations

import itertools

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
