"""Properties of engine.pool.resilience.Retry and Backoff (layer 1: pure, no processes)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import (
    ArgumentTypeError,
    CallTimeout,
    EngineError,
    PoolTimeout,
    ProtocolError,
    RemoteError,
    RetriesExhausted,
    WorkerCrashed,
)
from engine.pool.resilience import (
    Backoff,
    CircuitBreaker,
    RestartIntensity,
    Retry,
    _float_field,
    _int_field,
)
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer1

FAST = scaled(200)


@st.composite
def policies(draw: st.DrawFn) -> Retry:
    base = draw(st.floats(0.0, 1.0))
    return Retry(
        attempts=draw(st.integers(1, 6)),
        base_delay=base,
        max_delay=draw(st.floats(base, 5.0)),
        multiplier=draw(st.floats(1.0, 4.0)),
    )


retryable = st.sampled_from([
    lambda: WorkerCrashed(worker_id="w1", pid=10, exit_code=1, command="echo"),
    lambda: CallTimeout(timeout=1.0, worker_id="w1", command="echo"),
    lambda: PoolTimeout(timeout=1.0),
])
non_retryable = st.sampled_from([
    lambda: RemoteError(type="ValueError", message="bad", command="echo"),
    lambda: ProtocolError("garbage frame"),
])


class FakeCall:
    """Fails with ``make_error()`` ``failures`` times, then returns the attempt number."""

    def __init__(self, failures: int, make_error: Callable[[], BaseException]) -> None:
        self.failures = failures
        self.make_error = make_error
        self.attempts: list[int] = []
        self.raised: list[BaseException] = []

    async def __call__(self, attempt: int) -> int:
        self.attempts.append(attempt)
        if len(self.attempts) <= self.failures:
            error = self.make_error()
            self.raised.append(error)
            raise error
        return attempt


async def no_sleep(seconds: float) -> None:
    await trio.lowlevel.checkpoint()


def run_with_fake_sleep(
    policy: Retry, fn: Callable[[int], Awaitable[int]], seed: int,
) -> tuple[int | BaseException, list[float]]:
    """Run ``policy.run(fn)`` in trio.run; return (result or exception, slept delays)."""
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        await trio.lowlevel.checkpoint()

    async def main() -> int | BaseException:
        try:
            return await policy.run(fn, rng=random.Random(seed), sleep=fake_sleep)
        except Exception as exc:
            return exc

    return trio.run(main), delays


@FAST
@given(policy=policies(), data=st.data(), make_error=retryable, seed=st.integers(0, 2**32))
def test_succeeds_after_k_retryable_failures(
    policy: Retry, data: st.DataObject, make_error: Callable[[], BaseException], seed: int,
) -> None:
    k = data.draw(st.integers(0, policy.attempts - 1), label="failures")
    call = FakeCall(k, make_error)
    result, delays = run_with_fake_sleep(policy, call, seed)
    assert result == k + 1
    assert call.attempts == list(range(1, k + 2))
    assert len(delays) == k
    for attempt, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= policy.delay_bound(attempt) <= policy.max_delay


@FAST
@given(policy=policies(), extra=st.integers(0, 3), make_error=retryable,
       seed=st.integers(0, 2**32))
def test_exhausted_after_attempts(
    policy: Retry, extra: int, make_error: Callable[[], BaseException], seed: int,
) -> None:
    call = FakeCall(policy.attempts + extra, make_error)
    result, delays = run_with_fake_sleep(policy, call, seed)
    assert call.attempts == list(range(1, policy.attempts + 1))
    assert len(delays) == policy.attempts - 1
    last = call.raised[-1]
    if policy.attempts == 1:
        # No retry happened: the error propagates unchanged.
        assert result is last
    else:
        assert isinstance(result, RetriesExhausted)
        assert result.attempts == policy.attempts
        assert result.last is last
        assert result.__cause__ is last
        assert result.command == getattr(last, "command", None)


@FAST
@given(policy=policies(), before=st.integers(0, 5), retry_error=retryable,
       fatal=non_retryable, seed=st.integers(0, 2**32))
def test_non_retryable_propagates_unchanged(
    policy: Retry, before: int, retry_error: Callable[[], BaseException],
    fatal: Callable[[], BaseException], seed: int,
) -> None:
    """RemoteError/ProtocolError end the run at once, even after retryable failures."""
    before = min(before, policy.attempts - 1)
    errors = iter([retry_error] * before + [fatal])
    raised: list[BaseException] = []

    async def fn(attempt: int) -> int:
        raised.append(next(errors)())
        raise raised[-1]

    result, delays = run_with_fake_sleep(policy, fn, seed)
    assert result is raised[-1]
    assert isinstance(result, RemoteError | ProtocolError)
    assert len(raised) == before + 1
    assert len(delays) == before


@pytest.mark.parametrize("error", [
    RemoteError(type="KeyError", message="x"), ProtocolError("bad frame"),
    ArgumentTypeError("is a set", command="echo", path='args["x"]'),
])
def test_never_retries_remote_protocol_or_argument_errors_even_if_listed(
        error: Exception) -> None:
    policy = Retry(attempts=5, retry_on=(EngineError, RemoteError, ProtocolError, Exception))
    assert not policy.should_retry(error)
    call = FakeCall(10, lambda: error)
    result, delays = run_with_fake_sleep(policy, call, 0)
    assert result is error
    assert call.attempts == [1]
    assert delays == []


@FAST
@given(policy=policies(), attempt=st.integers(1, 200))
def test_delay_bounds_are_monotone_and_capped(policy: Retry, attempt: int) -> None:
    bound = policy.delay_bound(attempt)
    assert 0.0 <= bound <= policy.max_delay
    assert bound <= policy.delay_bound(attempt + 1)
    assert policy.delay_bound(1) == min(policy.max_delay, policy.base_delay)


def test_delay_bound_survives_huge_attempts() -> None:
    assert Retry(max_delay=3.0).delay_bound(10**6) == 3.0


def test_default_policy_values() -> None:
    policy = Retry()
    assert (policy.attempts, policy.base_delay, policy.max_delay, policy.multiplier) == (
        3, 0.05, 2.0, 2.0)
    assert policy.retry_on == (WorkerCrashed, CallTimeout, PoolTimeout)
    assert [policy.delay_bound(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"attempts": 0}, "attempts"),
    ({"attempts": 1.5}, "attempts"),
    ({"attempts": True}, "attempts"),
    ({"base_delay": -0.1}, "base_delay"),
    ({"max_delay": float("inf")}, "max_delay"),
    ({"max_delay": float("nan")}, "max_delay"),
    ({"base_delay": 1.0, "max_delay": 0.5}, "max_delay"),
    ({"multiplier": 0.5}, "multiplier"),
    ({"retry_on": (ValueError, "nope")}, "retry_on"),
    ({"retry_on": 3}, "retry_on must be an exception class or a tuple of them, got 3"),
])
def test_invalid_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_one_exception_class_is_taken_as_itself() -> None:
    """retry_on=WorkerCrashed, not (WorkerCrashed,): a user's natural spelling
    (it failed with "'type' object is not iterable", and RemoteError with an
    unrelated message; second new-user audit)."""
    assert Retry(retry_on=WorkerCrashed).retry_on == (WorkerCrashed,)
    assert Retry(retry_on=RemoteError).retry_on == (RemoteError,)
    assert Retry(retry_on=[CallTimeout, PoolTimeout]).retry_on == (CallTimeout, PoolTimeout)
    assert not Retry(retry_on=RemoteError).should_retry(
        RemoteError.from_reply(type="ValueError", message="no"))


def test_on_retry_sees_each_failure_and_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    call = FakeCall(2, lambda: CallTimeout(timeout=1.0, command="echo"))

    async def main() -> int:
        return await Retry(attempts=3).run(
            call, rng=random.Random(1), sleep=no_sleep,
            on_retry=lambda n, exc, delay: seen.append((n, type(exc).__name__, delay)),
        )

    assert trio.run(main) == 3
    assert [(n, name) for n, name, _ in seen] == [(1, "CallTimeout"), (2, "CallTimeout")]


def test_real_trio_sleep_under_mock_clock() -> None:
    """With the default sleep, the run takes exactly the sum of the jittered delays."""
    policy = Retry(attempts=4, base_delay=1.0, max_delay=10.0)
    delays: list[float] = []
    call = FakeCall(3, lambda: WorkerCrashed(worker_id="w", pid=1))

    async def main() -> float:
        start = trio.current_time()
        assert await policy.run(
            call, rng=random.Random(7), on_retry=lambda n, e, d: delays.append(d)) == 4
        return trio.current_time() - start

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert elapsed == pytest.approx(sum(delays))
    assert all(0.0 <= d <= policy.delay_bound(n) for n, d in enumerate(delays, start=1))


def test_cancellation_during_backoff_is_not_swallowed() -> None:
    call = FakeCall(10**6, lambda: WorkerCrashed(worker_id="w", pid=1))

    async def main() -> None:
        with trio.move_on_after(5.0) as scope:
            await Retry(attempts=1000, base_delay=1.0, max_delay=1.0).run(
                call, rng=random.Random(0))
        assert scope.cancelled_caught

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 1 < len(call.attempts) < 1000


def test_cancellation_raised_by_the_call_is_never_retried() -> None:
    attempts: list[int] = []

    async def fn(attempt: int) -> None:
        attempts.append(attempt)
        await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(1.0):
            await Retry(attempts=5, retry_on=(BaseException,)).run(fn)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert attempts == [1]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1)])
def test_base_exceptions_propagate(error: BaseException) -> None:
    policy = Retry(attempts=3, retry_on=(BaseException,))
    assert not policy.should_retry(error)
    call = FakeCall(1, lambda: error)
    with pytest.raises(type(error)):
        trio.run(policy.run, call)
    assert call.attempts == [1]


# --- Backoff (per-slot restart delay) -------------------------------------------------


@FAST
@given(
    initial=st.floats(0.0, 1.0), extra=st.floats(0.0, 10.0), multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0), calls=st.integers(1, 40), seed=st.integers(0, 2**32),
)
def test_backoff_first_restart_immediate_then_bounded(
    initial: float, extra: float, multiplier: float, jitter: float, calls: int, seed: int,
) -> None:
    backoff = Backoff(initial=initial, maximum=initial + extra, multiplier=multiplier,
                      jitter=jitter)
    rng = random.Random(seed)
    delays = [backoff.next_delay(rng) for _ in range(calls)]
    assert delays[0] == 0.0
    for n, delay in enumerate(delays):
        bound = backoff.bound(n)
        assert bound <= backoff.maximum
        assert bound <= backoff.bound(n + 1)
        # jitter j draws from ((1 - j) * bound, bound]
        assert (1.0 - jitter) * bound - 1e-12 <= delay <= bound
    assert backoff.restarts == calls


def test_backoff_resets_after_a_healthy_period() -> None:
    backoff = Backoff(initial=0.05, maximum=5.0, reset_after=10.0)
    rng = random.Random(3)
    assert backoff.next_delay(rng) == 0.0
    assert backoff.next_delay(rng) > 0.0
    backoff.record_healthy(9.9)  # not long enough
    assert backoff.next_delay(rng) > 0.0
    backoff.record_healthy(10.0)
    assert backoff.next_delay(rng) == 0.0
    assert backoff.next_delay(rng) > 0.0
    backoff.reset()
    assert backoff.next_delay(rng) == 0.0


def test_backoff_without_jitter_is_the_exponential_bound() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(7)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"initial": -1.0}, "initial"),
    ({"initial": 2.0, "maximum": 1.0}, "maximum"),
    ({"multiplier": 0.9}, "multiplier"),
    ({"reset_after": float("inf")}, "reset_after"),
    ({"jitter": 1.5}, "jitter"),
])
def test_backoff_invalid_config_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)


# --- what the policies are given, and what they say -----------------------------------


def test_run_names_the_command_it_was_given() -> None:
    call = FakeCall(5, lambda: CallTimeout(timeout=1.0, command="from-the-error"))
    result, _ = run_with_fake_sleep(Retry(attempts=2), call, seed=0)
    assert isinstance(result, RetriesExhausted) and result.command == "from-the-error"

    async def main() -> None:
        await Retry(attempts=2).run(call, sleep=no_sleep, command="given")

    with pytest.raises(RetriesExhausted) as info:
        trio.run(main)
    assert info.value.command == "given"


def test_run_draws_its_pauses_from_the_given_rng() -> None:
    policy = Retry(attempts=4, base_delay=0.5, max_delay=4.0)
    result, slept = run_with_fake_sleep(
        policy, FakeCall(3, lambda: WorkerCrashed(worker_id="w", pid=1)), seed=42)
    assert result == 4
    # run_with_fake_sleep passes random.Random(seed): the same draws, in order.
    same = random.Random(42)
    assert slept == [same.uniform(0.0, policy.delay_bound(n)) for n in (1, 2, 3)]


def test_delay_is_drawn_from_the_given_rng_below_the_bound() -> None:
    policy = Retry(base_delay=0.5, max_delay=4.0)
    assert policy.delay(3, random.Random(5)) == random.Random(5).uniform(0.0, 2.0)
    assert 0.0 <= policy.delay(3) <= 2.0  # the shared generator


def test_delay_bound_rejects_attempts_below_one() -> None:
    with pytest.raises(ValueError, match=r"^attempt must be >= 1, got 0$"):
        Retry().delay_bound(0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Retry(attempts=0), "attempts must be >= 1, got 0"),
    (lambda: Retry(attempts="3"), "attempts must be an int, got '3'"),
    (lambda: Retry(base_delay="0.1"), "base_delay must be a number, got '0.1'"),
    (lambda: Retry(base_delay=True), "base_delay must be a number, got True"),
    (lambda: Retry(max_delay=float("inf")), "max_delay must be finite, got inf"),
    (lambda: Retry(base_delay=-0.1), "base_delay must be >= 0, got -0.1"),
    (lambda: Retry(multiplier=0.5), "multiplier must be >= 1, got 0.5"),
    (lambda: Retry(base_delay=1.0, max_delay=0.5),
     "max_delay must be >= base_delay (1.0), got 0.5"),
    (lambda: Retry(retry_on=[ValueError, "x"]), "retry_on must hold exception classes, got 'x'"),
    (lambda: Backoff(jitter=1.5), "jitter must be <= 1, got 1.5"),
    (lambda: Backoff(initial=2.0, maximum=1.0), "maximum must be >= initial (2.0), got 1.0"),
    (lambda: CircuitBreaker(window=0.0), "window must be > 0, got 0.0"),
    (lambda: CircuitBreaker(half_open_max_probes=0), "half_open_max_probes must be >= 1, got 0"),
    (lambda: RestartIntensity(period=-1.0), "period must be > 0, got -1.0"),
])
def test_invalid_values_get_a_message_naming_field_value_and_rule(
    make: Callable[[], object], message: str,
) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_boundary_values_are_accepted() -> None:
    assert Retry(base_delay=0.0, max_delay=0.0, multiplier=1.0).delay_bound(5) == 0.0
    assert Retry(attempts=1, base_delay=0.5, max_delay=0.5).attempts == 1
    assert Backoff(initial=0.0, maximum=0.0, jitter=0.0, reset_after=0.0).next_delay() == 0.0
    assert Backoff(jitter=1.0, multiplier=1.0).jitter == 1.0
    assert CircuitBreaker(failure_threshold=1, window=1e-9, reset_timeout=1e-9).window == 1e-9
    assert RestartIntensity(max_restarts=1, period=0.5).period == 0.5


def test_field_validators_check_what_they_were_built_with() -> None:
    # The attrs classes build their validators at import; build some here.
    attribute = attrs.fields(Retry).base_delay

    def problem(check: Callable[[object, object, object], None], value: object) -> str | None:
        try:
            check(None, attribute, value)
        except ValueError as exc:
            return str(exc)
        return None

    at_least_zero = _float_field()
    assert problem(at_least_zero, 0.0) is None and problem(at_least_zero, 0.5) is None
    assert problem(at_least_zero, -0.5) == "base_delay must be >= 0, got -0.5"
    assert problem(at_least_zero, "1") == "base_delay must be a number, got '1'"
    assert problem(_float_field(above=True), 0.0) == "base_delay must be > 0, got 0.0"
    assert problem(_float_field(1.0), 0.5) == "base_delay must be >= 1, got 0.5"
    assert problem(_float_field(1.0), 1.0) is None
    assert problem(_float_field(at_most=1.0), 1.5) == "base_delay must be <= 1, got 1.5"
    assert problem(_float_field(at_most=1.0), 1.0) is None
    at_least_two = _int_field(2)
    assert problem(at_least_two, 2) is None
    assert problem(at_least_two, 1) == "base_delay must be >= 2, got 1"
    assert problem(at_least_two, 2.0) == "base_delay must be an int, got 2.0"
