"""Retry policy, circuit breaker and restart pacing (design sections 8 and 9).

Everything here is bookkeeping: no locks, no tasks, no I/O. The pool calls these
objects before and after the work they guard, so they never serialise calls and
never hold anything across an ``await`` (:meth:`Retry.run` only awaits the
caller's function and the sleep between attempts).

* :class:`Retry` - retry an *idempotent* call on another worker, with
  exponential backoff and full jitter.
* :class:`CircuitBreaker` - the pool-wide breaker (closed, open, half-open) that
  makes checkouts fail fast with :class:`~engine.errors.PoolUnavailable` while
  most slots keep failing.
* :class:`Backoff` - per-slot restart delay: the first restart is immediate,
  later ones back off exponentially; a healthy period resets it.
* :class:`RestartIntensity` - per-slot ``max_restarts`` in ``restart_period``;
  when exceeded the slot cools down.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import attrs
import trio

from engine.errors import (
    ArgumentError,
    CallTimeout,
    PoolTimeout,
    ProtocolError,
    RemoteError,
    RetriesExhausted,
    WorkerCrashed,
)

__all__ = [
    "FAILURE_KINDS",
    "Backoff",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "Decision",
    "RestartIntensity",
    "Retry",
]

T = TypeVar("T")

logger = logging.getLogger("engine.pool.resilience")

# Shared default source of jitter. Seeding a fresh ``random.Random()`` per call
# would cost an os.urandom syscall each time; jitter needs no cryptographic
# quality, only decorrelation between slots and callers.
_RNG: Final = random.Random()

# Errors that mean "the worker answered", "the wire is corrupt" or "the caller's
# arguments cannot be sent": retrying the first or the last repeats a
# deterministic failure, retrying the second hides a bug.
_NEVER_RETRY: Final = (RemoteError, ProtocolError, ArgumentError)


# --- validation helpers -------------------------------------------------------


def _check_int(name: str, value: object, *, at_least: int) -> None:
    # bool is an int subclass; ``attempts=True`` is a bug, not "1 attempt".
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < at_least:
        raise ValueError(f"{name} must be >= {at_least}, got {value!r}")


def _check_float(
    name: str, value: object, *, at_least: float = 0.0, above: bool = False,
    at_most: float | None = None,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if above and value <= at_least:
        raise ValueError(f"{name} must be > {at_least:g}, got {value!r}")
    if value < at_least:
        raise ValueError(f"{name} must be >= {at_least:g}, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be <= {at_most:g}, got {value!r}")


def _int_field(at_least: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        _check_int(attribute.name, value, at_least=at_least)

    return check


def _float_field(
    at_least: float = 0.0, *, above: bool = False, at_most: float | None = None,
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        _check_float(attribute.name, value, at_least=at_least, above=above, at_most=at_most)

    return check


def _exp_bound(base: float, multiplier: float, maximum: float, exponent: int) -> float:
    """``min(maximum, base * multiplier**exponent)`` without float overflow."""
    try:
        grown = base * multiplier**exponent
    except OverflowError:  # e.g. 2.0 ** 5000: the cap has long been reached
        return maximum
    return min(maximum, grown)


# --- Retry ----------------------------------------------------------------------


def _to_exc_tuple(value: type[BaseException] | Iterable[type[BaseException]]
                  ) -> tuple[type[BaseException], ...]:
    # One class is taken as itself: iterating a class fails obscurely (and
    # RemoteError's metaclass would read it as RemoteError[0]).
    if isinstance(value, type):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f"retry_on must be an exception class or a tuple of them, got "
                         f"{value!r}") from None


def _check_retry_on(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{attribute.name} must hold exception classes, got {item!r}")


@attrs.frozen
class Retry:
    """Retry policy for idempotent calls (design section 9).

    ``attempts`` is the total number of attempts (1 = no retry). Between attempt
    ``n`` and ``n + 1`` the policy sleeps :meth:`delay` ``(n)``: full jitter, a
    uniform draw in ``[0, delay_bound(n)]``, where the bound grows from
    ``base_delay`` by ``multiplier`` per attempt and is capped at ``max_delay``.

    Only exceptions that are instances of ``retry_on`` are retried (by default
    :class:`~engine.errors.WorkerCrashed`, :class:`~engine.errors.CallTimeout`
    and :class:`~engine.errors.PoolTimeout`: the pool serves the next attempt on
    another worker). :class:`~engine.errors.RemoteError` and
    :class:`~engine.errors.ProtocolError` are **never** retried, even if listed
    (or a base class of theirs is): the worker answered, or the wire broke, and a
    second try would repeat the failure or hide a bug. Only :class:`Exception`
    subclasses are retried, so cancellation (``trio.Cancelled``),
    ``KeyboardInterrupt`` and ``SystemExit`` always propagate at once. An
    exception group is matched as a whole, never split.

    Invalid values raise ``ValueError`` naming the field.
    """

    attempts: int = attrs.field(default=3, validator=_int_field(1))
    base_delay: float = attrs.field(default=0.05, validator=_float_field())
    max_delay: float = attrs.field(default=2.0, validator=_float_field())
    multiplier: float = attrs.field(default=2.0, validator=_float_field(1.0))
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(WorkerCrashed, CallTimeout, PoolTimeout),
        converter=_to_exc_tuple,
        validator=_check_retry_on,
    )

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay must be >= base_delay ({self.base_delay!r}), got {self.max_delay!r}"
            )

    def should_retry(self, exc: BaseException) -> bool:
        """True if ``exc`` may be retried under this policy."""
        if not isinstance(exc, Exception) or isinstance(exc, _NEVER_RETRY):
            return False
        return isinstance(exc, self.retry_on)

    def delay_bound(self, attempt: int) -> float:
        """Upper bound of the sleep after failed attempt ``attempt`` (1-based).

        ``min(max_delay, base_delay * multiplier ** (attempt - 1))``: non-decreasing
        in ``attempt`` and never above ``max_delay``.
        """
        _check_int("attempt", attempt, at_least=1)
        return _exp_bound(self.base_delay, self.multiplier, self.max_delay, attempt - 1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The jittered sleep after failed attempt ``attempt``: uniform in ``[0, bound]``."""
        return (rng or _RNG).uniform(0.0, self.delay_bound(attempt))

    async def run(
        self,
        fn: Callable[[int], Awaitable[T]],
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = trio.sleep,
        on_retry: Callable[[int, Exception, float], object] | None = None,
        command: str | None = None,
    ) -> T:
        """Await ``fn(attempt)`` (attempt = 1, 2, ...) until it returns.

        A non-retryable exception propagates unchanged at once. When every one
        of ``attempts`` attempts failed with a retryable error and at least one
        retry happened, raises :class:`~engine.errors.RetriesExhausted` chained
        ``from`` the last error (with ``attempts=1`` the error propagates as is).

        ``on_retry(attempt, exc, delay)`` is called before each sleep (for
        logging or telemetry; its exceptions propagate). ``sleep`` and ``rng``
        are injectable for tests. ``command`` names the call in the error; by
        default it is taken from the last error's ``command`` attribute.
        """
        attempt = 1
        while True:
            try:
                return await fn(attempt)
            except Exception as exc:
                if not self.should_retry(exc) or self.attempts == 1:
                    raise
                if attempt >= self.attempts:
                    name = command if command is not None else getattr(exc, "command", None)
                    raise RetriesExhausted(attempts=attempt, last=exc, command=name) from exc
                failure = exc
            # Sleep outside the ``except`` block so that a Cancelled raised by the
            # sleep does not carry the retried failure as its __context__.
            pause = self.delay(attempt, rng)
            if on_retry is not None:
                on_retry(attempt, failure, pause)
            del failure  # don't keep the traceback (and its frames) alive while sleeping
            await sleep(pause)
            attempt += 1


# --- Circuit breaker ------------------------------------------------------------


class BreakerState(enum.StrEnum):
    """State of a :class:`CircuitBreaker` (a ``str``, handy in telemetry metadata)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Failure kinds a :class:`CircuitBreaker` counts by default. Others are ignored:
#: a handler error or a slow call says nothing about whether workers can run.
FAILURE_KINDS: Final = frozenset({"crash", "start_failure", "health_failure"})


@attrs.frozen
class Decision:
    """Answer of :meth:`CircuitBreaker.allow`.

    ``allowed``: go ahead. ``probe``: this call is a half-open probe; report its
    outcome with :meth:`CircuitBreaker.probe_finished` - or, if the prober was
    cancelled, :meth:`CircuitBreaker.probe_abandoned` - exactly once, passing
    ``generation`` so that a late report from an older half-open period is
    ignored. A probe never reported keeps its slot until the state changes.
    ``retry_in``: when denied while open, seconds until a probe will be allowed
    (``None`` when unknown: a probe is in flight).
    ``reason``: one line for :class:`~engine.errors.PoolUnavailable`.
    """

    allowed: bool
    probe: bool
    retry_in: float | None
    reason: str
    generation: int = 0


@attrs.frozen
class BreakerStatistics:
    """Snapshot of a :class:`CircuitBreaker` (see :meth:`CircuitBreaker.statistics`)."""

    state: BreakerState
    recent_failures: int
    total_failures: int
    ignored_failures: int
    successes: int
    times_opened: int
    probes_in_flight: int
    retry_in: float | None
    reason: str


TransitionCallback = Callable[[BreakerState, BreakerState, str], object]


def _to_kinds(kinds: Iterable[str]) -> frozenset[str]:
    return frozenset(kinds)


def _to_callbacks(callbacks: Iterable[TransitionCallback]) -> list[TransitionCallback]:
    return list(callbacks)


@attrs.define(eq=False)
class CircuitBreaker:
    """The pool-wide circuit breaker: a pure, synchronous state machine.

    * **closed**: everything is allowed. ``failure_threshold`` failures (of the
      ``counted_kinds``) within ``window`` seconds open it.
    * **open**: :meth:`allow` denies, with ``retry_in``. After ``reset_timeout``
      seconds it becomes half-open; the transition is evaluated lazily, by
      whichever method (or :attr:`state`) looks next.
    * **half_open**: up to ``half_open_max_probes`` concurrent probes are
      allowed; others are denied. A successful probe (or any
      :meth:`record_success`) closes it; a failed probe or a counted failure
      opens it again for another ``reset_timeout``.

    It holds no lock and never serialises the calls it guards: call
    :meth:`allow` before and :meth:`record_success` / :meth:`record_failure` /
    :meth:`probe_finished` after. Nothing here raises on a valid call; the
    caller turns a denial into ``PoolUnavailable(reason=..., retry_in=...)``.

    ``clock`` is injected (the pool passes ``trio.current_time``).
    ``on_transition`` callbacks get ``(old, new, reason)`` after the state has
    changed; a callback that raises is logged and ignored.
    """

    failure_threshold: int = attrs.field(default=5, validator=_int_field(1))
    window: float = attrs.field(default=10.0, validator=_float_field(above=True))
    reset_timeout: float = attrs.field(default=5.0, validator=_float_field(above=True))
    half_open_max_probes: int = attrs.field(default=1, validator=_int_field(1))
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    counted_kinds: frozenset[str] = attrs.field(
        default=FAILURE_KINDS, converter=_to_kinds, kw_only=True
    )
    on_transition: list[TransitionCallback] = attrs.field(
        factory=list, converter=_to_callbacks, kw_only=True
    )

    _state: BreakerState = attrs.field(default=BreakerState.CLOSED, init=False)
    # Only the newest ``failure_threshold`` timestamps can decide whether the
    # threshold is reached inside the window, so memory stays constant.
    _failures: deque[float] = attrs.field(init=False, factory=deque)
    _opened_at: float = attrs.field(default=0.0, init=False)
    _reason: str = attrs.field(default="", init=False)  # of the last transition
    _open_reason: str = attrs.field(default="", init=False)  # why it last opened
    _generation: int = attrs.field(default=0, init=False)
    _probes: int = attrs.field(default=0, init=False)
    _total_failures: int = attrs.field(default=0, init=False)
    _ignored_failures: int = attrs.field(default=0, init=False)
    _successes: int = attrs.field(default=0, init=False)
    _times_opened: int = attrs.field(default=0, init=False)
    _closed_decision: Decision | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # Built here, after the validators ran, so a bad threshold is reported
        # as a ValueError naming the field rather than by deque().
        self._failures = deque(maxlen=self.failure_threshold)

    # -- queries --

    @property
    def state(self) -> BreakerState:
        """Current state (an expired open period turns into half-open here)."""
        return self._tick(self.clock())

    def allow(self) -> Decision:
        """May a checkout proceed? Never raises; see :class:`Decision`."""
        if self._state is BreakerState.CLOSED:
            # Hot path (every checkout): closed never changes by itself, so no
            # clock read, and one shared answer per generation.
            decision = self._closed_decision
            if decision is None or decision.generation != self._generation:
                decision = self._closed_decision = Decision(
                    True, False, None, "closed", self._generation)
            return decision
        now = self.clock()
        state = self._tick(now)
        if state is BreakerState.CLOSED:
            return Decision(True, False, None, "closed", self._generation)
        if state is BreakerState.OPEN:
            return Decision(
                False, False, self._retry_in(now), f"circuit open: {self._open_reason}",
                self._generation,
            )
        if self._probes < self.half_open_max_probes:
            self._probes += 1
            return Decision(True, True, None, "half-open: probe allowed", self._generation)
        return Decision(
            False, False, None,
            f"circuit half-open: {self._probes} probe(s) in flight; opened because "
            f"{self._open_reason}",
            self._generation,
        )

    def statistics(self) -> BreakerStatistics:
        """A frozen snapshot of the counters and the current state."""
        now = self.clock()
        state = self._tick(now)
        return BreakerStatistics(
            state=state,
            recent_failures=self._recent_failures(now),
            total_failures=self._total_failures,
            ignored_failures=self._ignored_failures,
            successes=self._successes,
            times_opened=self._times_opened,
            probes_in_flight=self._probes,
            retry_in=self._retry_in(now) if state is BreakerState.OPEN else None,
            reason=self._reason,
        )

    # -- reports --

    def record_success(self) -> None:
        """A guarded operation succeeded. In half-open this closes the breaker."""
        self._successes += 1
        if self._tick(self.clock()) is BreakerState.HALF_OPEN:
            self._close("success while half-open")

    def record_failure(self, kind: str, reason: str) -> None:
        """A worker failed. Only ``counted_kinds`` count; ``reason`` is for humans."""
        if kind not in self.counted_kinds:
            self._ignored_failures += 1
            return
        self._total_failures += 1
        now = self.clock()
        state = self._tick(now)
        if state is BreakerState.HALF_OPEN:
            self._open(now, f"{kind} while half-open: {reason}")
        elif state is BreakerState.CLOSED:
            self._failures.append(now)
            if self._recent_failures(now) >= self.failure_threshold:
                self._open(now, (
                    f"{self.failure_threshold} worker failures within {self.window:g}s "
                    f"(last: {kind}: {reason})"
                ))
        # While open, failures change nothing: the open period is not extended,
        # so a crash-looping pool still gets its probe after reset_timeout.

    def probe_finished(self, success: bool, generation: int | None = None) -> None:
        """Report the outcome of a probe granted by :meth:`allow`.

        Success closes the breaker, failure re-opens it. A report arriving after
        the half-open period it belongs to has ended (the state moved on, or
        ``generation`` differs) is ignored.
        """
        now = self.clock()
        if self._tick(now) is not BreakerState.HALF_OPEN:
            return
        if generation is not None and generation != self._generation:
            return
        self._probes = max(0, self._probes - 1)
        if success:
            self._close("probe succeeded")
        else:
            self._open(now, "probe failed")

    def probe_abandoned(self, generation: int | None = None) -> None:
        """Return a probe's slot without a verdict (the prober was cancelled).

        The state does not change; another caller may probe. Stale reports are
        ignored as in :meth:`probe_finished`.
        """
        if self._tick(self.clock()) is not BreakerState.HALF_OPEN:
            return
        if generation is not None and generation != self._generation:
            return
        self._probes = max(0, self._probes - 1)

    # -- internals --

    def _tick(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.reset_timeout:
            self._generation += 1
            self._probes = 0
            self._transition(
                BreakerState.HALF_OPEN, f"reset_timeout ({self.reset_timeout:g}s) elapsed"
            )
        return self._state

    def _recent_failures(self, now: float) -> int:
        return sum(1 for t in self._failures if now - t < self.window)

    def _retry_in(self, now: float) -> float:
        # Clamped because opened_at + reset_timeout - now can round past either end.
        return min(self.reset_timeout, max(0.0, self._opened_at + self.reset_timeout - now))

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._failures.clear()
        self._probes = 0
        self._times_opened += 1
        self._open_reason = reason
        self._transition(BreakerState.OPEN, reason)

    def _close(self, reason: str) -> None:
        self._failures.clear()
        self._probes = 0
        self._transition(BreakerState.CLOSED, reason)

    def _transition(self, new: BreakerState, reason: str) -> None:
        old, self._state, self._reason = self._state, new, reason
        for callback in tuple(self.on_transition):
            try:
                callback(old, new, reason)
            except Exception:
                # Telemetry must never break the bookkeeping of a checkout.
                logger.exception("circuit breaker on_transition callback %r raised", callback)


# --- per-slot restart pacing ----------------------------------------------------------


@attrs.define(eq=False)
class Backoff:
    """Per-slot restart delay (design section 8).

    The first :meth:`next_delay` after creation or :meth:`reset` is ``0.0``
    (restart at once); the ``n``-th after that is jittered below
    ``min(maximum, initial * multiplier ** (n - 1))``. ``jitter`` is the jittered
    fraction: 1.0 (default) is full jitter, a uniform draw in ``(0, bound]``;
    0.0 is the plain exponential bound. :meth:`record_healthy` resets it once a
    worker stayed up for ``reset_after`` seconds.
    """

    initial: float = attrs.field(default=0.05, validator=_float_field())
    maximum: float = attrs.field(default=5.0, validator=_float_field())
    multiplier: float = attrs.field(default=2.0, validator=_float_field(1.0))
    reset_after: float = attrs.field(default=10.0, validator=_float_field())
    jitter: float = attrs.field(default=1.0, validator=_float_field(at_most=1.0))
    _restarts: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(
                f"maximum must be >= initial ({self.initial!r}), got {self.maximum!r}"
            )

    @property
    def restarts(self) -> int:
        """Delays handed out since creation or the last reset."""
        return self._restarts

    def bound(self, restart: int) -> float:
        """Upper bound of the delay for the ``restart``-th delay (0-based; 0 -> 0.0)."""
        if restart <= 0:
            return 0.0
        return _exp_bound(self.initial, self.multiplier, self.maximum, restart - 1)

    def next_delay(self, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next restart."""
        bound = self.bound(self._restarts)
        self._restarts += 1
        if bound == 0.0:
            return 0.0
        # 1 - random() is in (0, 1]: full jitter never exceeds the bound.
        return bound * (1.0 - self.jitter * (rng or _RNG).random())

    def record_healthy(self, duration: float) -> None:
        """A worker stayed healthy for ``duration`` seconds: reset if long enough."""
        if duration >= self.reset_after:
            self.reset()

    def reset(self) -> None:
        """Make the next restart immediate again."""
        self._restarts = 0


@attrs.define(eq=False)
class RestartIntensity:
    """Per-slot restart intensity: at most ``max_restarts`` in ``period`` seconds.

    :meth:`record` registers a restart and returns True, or returns False (and
    registers nothing) when ``max_restarts`` restarts already happened within the
    last ``period`` seconds: the slot should cool down for
    :meth:`cooldown_remaining` seconds. Memory is bounded by ``max_restarts``.
    """

    max_restarts: int = attrs.field(default=10, validator=_int_field(1))
    period: float = attrs.field(default=30.0, validator=_float_field(above=True))
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    _times: deque[float] = attrs.field(init=False, factory=deque)

    def __attrs_post_init__(self) -> None:
        # After validation (see CircuitBreaker.__attrs_post_init__).
        self._times = deque(maxlen=self.max_restarts)

    def record(self) -> bool:
        """Register a restart now; False when the intensity is exceeded."""
        now = self.clock()
        self._prune(now)
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def cooldown_remaining(self) -> float:
        """Seconds until :meth:`record` would succeed again (0.0 if it would now)."""
        now = self.clock()
        self._prune(now)
        if len(self._times) < self.max_restarts:
            return 0.0
        return max(0.0, self._times[0] + self.period - now)

    def recent(self) -> int:
        """Restarts registered within the last ``period`` seconds."""
        self._prune(self.clock())
        return len(self._times)

    def reset(self) -> None:
        """Forget every registered restart."""
        self._times.clear()

    def _prune(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.period:
            self._times.popleft()
