"""Model-based test of engine.pool.resilience.CircuitBreaker under a fake clock (layer 1).

A deliberately naive reference model (every failure time kept in a list, states as
strings) is stepped alongside the real breaker; after every step the state, the
decisions, the transitions reported to ``on_transition`` and the statistics must
agree.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine.pool.resilience import (
    FAILURE_KINDS,
    BreakerState,
    CircuitBreaker,
    Decision,
    RestartIntensity,
)

pytestmark = pytest.mark.layer1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Model:
    """The breaker's specification, written for clarity rather than efficiency."""

    def __init__(self, threshold: int, window: float, reset: float, probes: int) -> None:
        self.threshold, self.window, self.reset, self.max_probes = threshold, window, reset, probes
        self.state = "closed"
        self.failure_times: list[float] = []
        self.opened_at = 0.0
        self.generation = 0
        self.in_flight = 0
        self.transitions: list[tuple[str, str]] = []
        self.total = self.ignored = self.successes = self.times_opened = 0

    def move(self, new: str) -> None:
        self.transitions.append((self.state, new))
        self.state = new

    def tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened_at + self.reset:
            self.generation += 1
            self.in_flight = 0
            self.move("half_open")

    def open(self, now: float) -> None:
        self.opened_at = now
        self.failure_times = []
        self.in_flight = 0
        self.times_opened += 1
        self.move("open")

    def close(self) -> None:
        self.failure_times = []
        self.in_flight = 0
        self.move("closed")

    def recent(self, now: float) -> int:
        return sum(1 for t in self.failure_times if now - t < self.window)

    def failure(self, now: float, kind: str) -> None:
        if kind not in FAILURE_KINDS:
            self.ignored += 1
            return
        self.total += 1
        self.tick(now)
        if self.state == "half_open":
            self.open(now)
        elif self.state == "closed":
            self.failure_times.append(now)
            if self.recent(now) >= self.threshold:
                self.open(now)

    def success(self, now: float) -> None:
        self.successes += 1
        self.tick(now)
        if self.state == "half_open":
            self.close()

    def allow(self, now: float) -> tuple[bool, bool, float | None]:
        self.tick(now)
        if self.state == "closed":
            return True, False, None
        if self.state == "open":
            return False, False, self.opened_at + self.reset - now
        if self.in_flight < self.max_probes:
            self.in_flight += 1
            return True, True, None
        return False, False, None

    def probe_abandoned(self, now: float, generation: int | None) -> None:
        self.probe_finished(now, None, generation)

    def probe_finished(self, now: float, success: bool | None, generation: int | None) -> None:
        self.tick(now)
        if self.state != "half_open" or generation not in (None, self.generation):
            return
        self.in_flight = max(0, self.in_flight - 1)
        if success is None:
            return  # abandoned: the slot is free again, the state unchanged
        if success:
            self.close()
        else:
            self.open(now)


kinds = st.sampled_from([*sorted(FAILURE_KINDS), "remote_error", "call_timeout"])
# Round steps hit the window and reset_timeout boundaries exactly; floats cover the rest.
steps = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 10.0]), st.floats(0.0, 12.0))


class BreakerMachine(RuleBasedStateMachine):
    clock: FakeClock
    breaker: CircuitBreaker
    model: Model

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []
        self.probes: list[int] = []  # generations of probes granted and not yet finished

    @initialize(
        threshold=st.integers(1, 5),
        window=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
        reset=st.sampled_from([0.5, 1.0, 5.0]),
        max_probes=st.integers(1, 3),
    )
    def setup(self, threshold: int, window: float, reset: float, max_probes: int) -> None:
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(
            failure_threshold=threshold, window=window, reset_timeout=reset,
            half_open_max_probes=max_probes, clock=self.clock,
            on_transition=[lambda old, new, reason: self.seen.append((old.value, new.value))],
        )
        self.model = Model(threshold, window, reset, max_probes)

    @rule(dt=steps)
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule(kind=kinds)
    def record_failure(self, kind: str) -> None:
        self.breaker.record_failure(kind, "test")
        self.model.failure(self.clock.now, kind)

    @rule()
    def record_success(self) -> None:
        self.breaker.record_success()
        self.model.success(self.clock.now)

    @rule()
    def allow(self) -> None:
        decision = self.breaker.allow()
        allowed, probe, retry_in = self.model.allow(self.clock.now)
        assert (decision.allowed, decision.probe) == (allowed, probe)
        assert decision.reason
        if retry_in is None:
            assert decision.retry_in is None
        else:
            assert decision.retry_in is not None
            assert decision.retry_in == pytest.approx(retry_in)
            assert 0.0 < decision.retry_in <= self.model.reset
        if probe:
            assert decision.generation == self.model.generation
            self.probes.append(decision.generation)

    @precondition(lambda self: self.probes)
    @rule(pick=st.integers(0, 10), success=st.booleans(), pass_generation=st.booleans())
    def finish_probe(self, pick: int, success: bool, pass_generation: bool) -> None:
        generation = self.probes.pop(pick % len(self.probes))
        given = generation if pass_generation else None
        self.breaker.probe_finished(success, given)
        self.model.probe_finished(self.clock.now, success, given)

    @precondition(lambda self: self.probes)
    @rule(pick=st.integers(0, 10), pass_generation=st.booleans())
    def abandon_probe(self, pick: int, pass_generation: bool) -> None:
        generation = self.probes.pop(pick % len(self.probes))
        given = generation if pass_generation else None
        self.breaker.probe_abandoned(given)
        self.model.probe_abandoned(self.clock.now, given)

    @rule(success=st.booleans(), generation=st.integers(0, 5))
    def stray_probe_report(self, success: bool, generation: int) -> None:
        """A report for a probe this breaker never granted (or a stale one)."""
        self.breaker.probe_finished(success, generation)
        self.model.probe_finished(self.clock.now, success, generation)

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        stats = self.breaker.statistics()
        now = self.clock.now
        self.model.tick(now)
        assert stats.state.value == self.model.state
        assert self.breaker.state == BreakerState(self.model.state)
        assert self.seen == self.model.transitions
        assert stats.recent_failures == self.model.recent(now)
        assert stats.total_failures == self.model.total
        assert stats.ignored_failures == self.model.ignored
        assert stats.successes == self.model.successes
        assert stats.times_opened == self.model.times_opened
        assert stats.probes_in_flight == self.model.in_flight
        assert stats.probes_in_flight <= self.model.max_probes
        assert (stats.retry_in is not None) == (self.model.state == "open")


BreakerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
)
TestBreakerMachine = BreakerMachine.TestCase


# --- examples ---------------------------------------------------------------------------


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # A function call, so that mypy does not narrow a property across calls.
    return breaker.state


def test_opens_at_threshold_within_window_and_recovers_through_a_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, window=10.0, reset_timeout=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure("crash", "exit 1")
    assert breaker.allow() == Decision(True, False, None, "closed", 0)
    breaker.record_failure("start_failure", "no hello")
    assert state_of(breaker) is BreakerState.OPEN
    denied = breaker.allow()
    assert not denied.allowed and denied.retry_in == 5.0
    assert "3 worker failures within 10s" in denied.reason and "no hello" in denied.reason
    clock.now = 5.0
    probe = breaker.allow()
    assert probe.allowed and probe.probe
    assert not breaker.allow().allowed  # only one probe at a time by default
    breaker.probe_finished(True, probe.generation)
    assert state_of(breaker) is BreakerState.CLOSED


def test_failures_outside_the_window_do_not_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, window=1.0, clock=clock)
    breaker.record_failure("crash", "a")
    clock.now = 1.0
    breaker.record_failure("crash", "b")
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure("health_failure", "c")
    assert state_of(breaker) is BreakerState.OPEN


def test_uncounted_kinds_are_ignored() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock())
    breaker.record_failure("remote_error", "handler raised")
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.statistics().ignored_failures == 1


def test_stale_probe_report_is_ignored() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.record_failure("crash", "x")
    clock.now = 1.0
    old_probe = breaker.allow()
    breaker.record_failure("crash", "y")  # reopens while the probe is in flight
    clock.now = 2.0
    new_probe = breaker.allow()
    assert new_probe.probe and new_probe.generation != old_probe.generation
    breaker.probe_finished(False, old_probe.generation)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.probe_finished(True, new_probe.generation)
    assert state_of(breaker) is BreakerState.CLOSED


def test_raising_transition_callback_is_logged_and_harmless(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(old: BreakerState, new: BreakerState, reason: str) -> None:
        raise RuntimeError("telemetry down")

    seen: list[BreakerState] = []
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock(),
                             on_transition=[broken, lambda o, n, r: seen.append(n)])
    with caplog.at_level(logging.ERROR, logger="engine.pool.resilience"):
        breaker.record_failure("crash", "x")
    assert state_of(breaker) is BreakerState.OPEN
    assert seen == [BreakerState.OPEN]
    assert "on_transition" in caplog.text


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"failure_threshold": "5"}, "failure_threshold"),
    ({"window": 0.0}, "window"),
    ({"reset_timeout": -1.0}, "reset_timeout"),
    ({"reset_timeout": float("nan")}, "reset_timeout"),
    ({"half_open_max_probes": 0}, "half_open_max_probes"),
])
def test_breaker_invalid_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


# --- RestartIntensity -------------------------------------------------------------------


def test_restart_intensity_limits_restarts_per_period() -> None:
    clock = FakeClock()
    intensity = RestartIntensity(max_restarts=3, period=10.0, clock=clock)
    assert [intensity.record() for _ in range(4)] == [True, True, True, False]
    assert intensity.cooldown_remaining() == 10.0
    clock.now = 4.0
    assert not intensity.record()
    assert intensity.cooldown_remaining() == 6.0
    clock.now = 10.0  # the first three age out together
    assert intensity.cooldown_remaining() == 0.0
    assert intensity.recent() == 0
    assert intensity.record()


@settings(max_examples=200, deadline=None)
@given(max_restarts=st.integers(1, 4), gaps=st.lists(st.floats(0.0, 5.0), max_size=60))
def test_restart_intensity_never_exceeds_its_budget(max_restarts: int, gaps: list[float]) -> None:
    clock = FakeClock()
    intensity = RestartIntensity(max_restarts=max_restarts, period=10.0, clock=clock)
    accepted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if intensity.record():
            accepted.append(clock.now)
        else:
            assert intensity.cooldown_remaining() > 0.0
        in_period = [t for t in accepted if clock.now - t < 10.0]
        assert len(in_period) <= max_restarts
        assert intensity.recent() == len(in_period)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_restarts": 0}, "max_restarts"),
    ({"period": 0.0}, "period"),
])
def test_restart_intensity_invalid_config(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RestartIntensity(**kwargs)  # type: ignore[arg-type]
