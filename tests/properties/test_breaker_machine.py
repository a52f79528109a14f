"""Model-based test of engine.pool.resilience.CircuitBreaker under a fake clock (layer 1).

A deliberately naive reference model (every failure time kept in a list, states as
strings) is stepped alongside the real breaker; after every step the state, the
decisions, the transitions reported to ``on_transition`` and the statistics must
agree.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
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
from engine.testing.profiles import scaled

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

# How a probe ends, and what Pool._acquire reports for it: it got a worker
# (success), its checkout timed out or failed (failure), or its caller was
# cancelled while it waited (abandoned: no verdict).
OUTCOMES = {"leased": True, "timed_out": False, "failed": False, "cancelled": None}


class Probe:
    """A probe the breaker granted, as its caller sees it."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        # Live until the breaker leaves the half-open period that granted it
        # (seen through on_transition, not through generation numbers): after
        # that its report is stale and must change nothing.
        self.live = True


class BreakerMachine(RuleBasedStateMachine):
    """The breaker against the model, plus progress properties checked against the
    probes the callers hold: an abandoned probe frees its slot, the breaker never
    stays half-open with no probe in flight, and a stale report changes nothing."""

    clock: FakeClock
    breaker: CircuitBreaker
    model: Model

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []
        self.reasons: list[str] = []
        self.probes: list[Probe] = []  # granted and not yet reported

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
            on_transition=[self.moved],
        )
        self.model = Model(threshold, window, reset, max_probes)

    def moved(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        self.seen.append((old.value, new.value))
        self.reasons.append(reason)
        for probe in self.probes:
            probe.live = False

    def live_probes(self) -> int:
        return sum(probe.live for probe in self.probes)

    @rule(dt=steps)
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule(kind=kinds)
    def record_failure(self, kind: str) -> None:
        self.breaker.record_failure(kind, "test")
        self.model.failure(self.clock.now, kind)

    @rule()
    def failures_burst(self) -> None:
        """Enough start failures at once to open a closed breaker."""
        for _ in range(self.model.threshold):
            self.record_failure("start_failure")

    @rule()
    def record_success(self) -> None:
        self.breaker.record_success()
        self.model.success(self.clock.now)

    @rule()
    def allow(self) -> None:
        self.ask()

    def ask(self) -> Decision:
        decision = self.breaker.allow()
        allowed, probe, retry_in = self.model.allow(self.clock.now)
        assert (decision.allowed, decision.probe) == (allowed, probe)
        assert decision.reason
        assert decision.generation == self.model.generation
        if retry_in is None:
            assert decision.retry_in is None
        else:
            assert decision.retry_in is not None
            assert decision.retry_in == pytest.approx(retry_in)
            assert 0.0 < decision.retry_in <= self.model.reset
        if probe:
            self.probes.append(Probe(decision.generation))
        return decision

    @rule()
    def time_passes(self) -> None:
        """Progress: once the open period is over a caller gets through (as a probe
        while half-open), unless as many probes as allowed are still in flight."""
        if self.breaker.state is BreakerState.OPEN:
            retry_in = self.breaker.statistics().retry_in
            assert retry_in is not None and 0.0 < retry_in <= self.model.reset
            self.clock.now += retry_in
        state = self.breaker.state
        full = self.live_probes() >= self.model.max_probes
        decision = self.ask()
        if state is BreakerState.CLOSED:
            assert decision.allowed and not decision.probe
        else:
            assert state is BreakerState.HALF_OPEN
            assert decision.allowed == decision.probe == (not full)

    @precondition(lambda self: self.probes)
    @rule(pick=st.integers(0, 10), outcome=st.sampled_from(sorted(OUTCOMES)),
          pass_generation=st.booleans())
    def end_probe(self, pick: int, outcome: str, pass_generation: bool) -> None:
        """A probe's caller reports how it ended, as Pool._acquire does."""
        probe = self.probes.pop(pick % len(self.probes))
        # A stale probe always reports its generation (the pool always does): the
        # breaker can only tell a stale report by it. Live ones may leave it out.
        given = probe.generation if pass_generation or not probe.live else None
        before = self.breaker.statistics()
        transitions = len(self.seen)
        success = OUTCOMES[outcome]
        if success is None:
            self.breaker.probe_abandoned(given)
            self.model.probe_abandoned(self.clock.now, given)
        else:
            self.breaker.probe_finished(success, given)
            self.model.probe_finished(self.clock.now, success, given)
        after = self.breaker.statistics()
        if not probe.live:
            # A stale probe's report never moves the breaker.
            assert after == before
            assert len(self.seen) == transitions
        elif success is None:
            # An abandoned probe frees its slot and decides nothing.
            assert after.state is before.state is BreakerState.HALF_OPEN
            assert after.probes_in_flight == before.probes_in_flight - 1
            assert len(self.seen) == transitions
        else:
            assert after.state is (BreakerState.CLOSED if success else BreakerState.OPEN)

    @rule(success=st.sampled_from([True, False, None]), offset=st.sampled_from([-2, -1, 1, 3]))
    def stray_probe_report(self, success: bool | None, offset: int) -> None:
        """A report for a probe this breaker never granted: another generation's."""
        generation = self.model.generation + offset
        before = self.breaker.statistics()
        transitions = len(self.seen)
        if success is None:
            self.breaker.probe_abandoned(generation)
        else:
            self.breaker.probe_finished(success, generation)
        assert self.breaker.statistics() == before
        assert len(self.seen) == transitions

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
        assert (stats.retry_in is not None) == (self.model.state == "open")
        # Every transition says why, and the statistics show the last reason.
        assert all(isinstance(reason, str) and reason for reason in self.reasons)
        assert stats.reason == (self.reasons[-1] if self.reasons else "")

    @invariant()
    def probes_in_flight_are_the_live_probes(self) -> None:
        """No slot is lost (an abandoned or finished probe gives its slot back, so
        the breaker never sits half-open with no probe in flight) and none is
        invented (never more probes than allowed)."""
        if not hasattr(self, "model"):
            return
        stats = self.breaker.statistics()
        live = self.live_probes()
        if stats.state is BreakerState.HALF_OPEN:
            assert stats.probes_in_flight == live <= self.model.max_probes
        else:
            assert stats.probes_in_flight == live == 0


BreakerMachine.TestCase.settings = scaled(200, stateful_step_count=50)
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


def test_every_transition_says_why() -> None:
    clock = FakeClock()
    moves: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        failure_threshold=2, window=10.0, reset_timeout=5.0, half_open_max_probes=2,
        clock=clock, on_transition=[lambda o, n, r: moves.append((o.value, n.value, r))])
    breaker.record_failure("crash", "exit 1")
    breaker.record_failure("start_failure", "no hello")
    clock.now = 5.0
    first, second = breaker.allow(), breaker.allow()
    assert first.reason == second.reason == "half-open: probe allowed"
    denied = breaker.allow()
    assert denied == Decision(
        False, False, None, "circuit half-open: 2 probe(s) in flight; opened because "
        "2 worker failures within 10s (last: start_failure: no hello)", first.generation)
    breaker.probe_finished(False, first.generation)
    clock.now = 10.0
    probe = breaker.allow()
    breaker.probe_finished(True, probe.generation)
    breaker.record_failure("crash", "a")
    breaker.record_failure("crash", "b")
    clock.now = 15.0
    breaker.record_success()
    breaker.record_failure("health_failure", "x")
    breaker.record_failure("health_failure", "y")
    clock.now = 20.0
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.record_failure("start_failure", "still broken")
    assert moves == [
        ("closed", "open", "2 worker failures within 10s (last: start_failure: no hello)"),
        ("open", "half_open", "reset_timeout (5s) elapsed"),
        ("half_open", "open", "probe failed"),
        ("open", "half_open", "reset_timeout (5s) elapsed"),
        ("half_open", "closed", "probe succeeded"),
        ("closed", "open", "2 worker failures within 10s (last: crash: b)"),
        ("open", "half_open", "reset_timeout (5s) elapsed"),
        ("half_open", "closed", "success while half-open"),
        ("closed", "open", "2 worker failures within 10s (last: health_failure: y)"),
        ("open", "half_open", "reset_timeout (5s) elapsed"),
        ("half_open", "open", "start_failure while half-open: still broken"),
    ]
    assert breaker.statistics().reason == "start_failure while half-open: still broken"
    assert breaker.allow().reason == "circuit open: start_failure while half-open: still broken"


def test_an_abandoned_probe_frees_its_own_slot_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, half_open_max_probes=2,
                             clock=clock)
    breaker.record_failure("crash", "x")
    clock.now = 1.0
    first, second = breaker.allow(), breaker.allow()
    assert first.probe and second.probe and not breaker.allow().allowed
    breaker.probe_abandoned(first.generation)  # its caller was cancelled
    assert breaker.statistics().probes_in_flight == 1
    third = breaker.allow()
    assert third.probe and not breaker.allow().allowed
    breaker.probe_abandoned(second.generation)
    breaker.probe_abandoned(third.generation)
    assert breaker.statistics().probes_in_flight == 0
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow().probe


def test_retry_in_counts_down_to_the_end_of_the_open_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, clock=clock)
    breaker.record_failure("crash", "x")
    for now, left in [(0.0, 5.0), (2.0, 3.0), (4.75, 0.25)]:
        clock.now = now
        assert breaker.allow().retry_in == pytest.approx(left)
        assert breaker.statistics().retry_in == pytest.approx(left)


def test_a_callback_may_move_the_breaker_again() -> None:
    """on_transition runs after the state changed, so a callback may report in
    turn (here: a worker started while the breaker went half-open); the caller
    then gets the answer of the state the breaker ended in."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)

    def close_when_half_open(old: BreakerState, new: BreakerState, reason: str) -> None:
        if new is BreakerState.HALF_OPEN:
            breaker.record_success()

    breaker.on_transition.append(close_when_half_open)
    breaker.record_failure("crash", "x")
    clock.now = 1.0
    assert breaker.allow() == Decision(True, False, None, "closed", 1)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.statistics().reason == "success while half-open"


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
    [record] = caplog.records
    assert record.getMessage() == f"circuit breaker on_transition callback {broken!r} raised"
    assert record.exc_info is not None and "telemetry down" in str(record.exc_info[1])


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
    clock.now = 9.5
    assert intensity.cooldown_remaining() == 0.5
    clock.now = 10.0  # the first three age out together
    assert intensity.cooldown_remaining() == 0.0
    assert intensity.recent() == 0
    assert intensity.record()


@scaled(200)
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
