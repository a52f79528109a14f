"""Telemetry events, latency histograms and metrics.

Events
------
An event is named by a tuple of strings, e.g. ``("engine", "worker", "ready")``,
and carries *measurements* (numbers: durations in seconds, counts) and
*metadata* (anything: ids, reasons). Handlers are process-wide, as in Erlang's
``:telemetry``::

    def log_ready(event, measurements, metadata):
        print(metadata["worker_id"], "is ready")

    telemetry.attach("my-app", [telemetry.WORKER_READY], log_ready)

A handler attached to ``("engine", "worker")`` receives every event whose name
starts with it; ``events=None`` receives everything. :data:`EVENTS` is the
catalogue of what the library emits, with the measurements and metadata of each.

Handlers run synchronously inside :func:`emit`, on the pool's hot path: keep them
cheap and non-blocking (hand heavy work to a channel or a thread). A handler
that raises is logged on the ``engine.telemetry`` logger and **stays attached**
(one bad event must not silence a metrics exporter); detach it yourself if it
keeps failing. Only :class:`Exception` is caught: ``KeyboardInterrupt`` and
``trio.Cancelled`` propagate.

Metrics
-------
:class:`Metrics` keeps counters and :class:`LatencyHistogram` s by name;
:meth:`Metrics.snapshot` returns a frozen :class:`MetricsSnapshot` (the pool's
``pool.metrics()``), which :func:`engine.telemetry.prometheus.render` formats.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final

import attrs

__all__ = [
    "EVENTS",
    "CapturedEvent",
    "Event",
    "Handler",
    "LatencyHistogram",
    "LatencySummary",
    "Metrics",
    "MetricsSnapshot",
    "active",
    "attach",
    "capture",
    "detach",
    "emit",
]

logger = logging.getLogger("engine.telemetry")

Event = tuple[str, ...]
Handler = Callable[[Event, Mapping[str, float], Mapping[str, Any]], None]

# --- event catalogue ------------------------------------------------------------

POOL_START: Final[Event] = ("engine", "pool", "start")
POOL_STOP: Final[Event] = ("engine", "pool", "stop")
WORKER_SPAWN: Final[Event] = ("engine", "worker", "spawn")
WORKER_READY: Final[Event] = ("engine", "worker", "ready")
WORKER_EXIT: Final[Event] = ("engine", "worker", "exit")
WORKER_RESTART: Final[Event] = ("engine", "worker", "restart")
WORKER_COOLDOWN: Final[Event] = ("engine", "worker", "cooldown")
WORKER_TRANSITION: Final[Event] = ("engine", "worker", "transition")
CHECKOUT: Final[Event] = ("engine", "checkout")
CHECKIN: Final[Event] = ("engine", "checkin")
CALL: Final[Event] = ("engine", "call")
HEALTH_OK: Final[Event] = ("engine", "health", "ok")
HEALTH_FAILED: Final[Event] = ("engine", "health", "failed")
BREAKER_TRANSITION: Final[Event] = ("engine", "breaker", "transition")
SESSION_BIND: Final[Event] = ("engine", "session", "bind")
SESSION_LOST: Final[Event] = ("engine", "session", "lost")
SESSION_EXPIRE: Final[Event] = ("engine", "session", "expire")
SESSION_END: Final[Event] = ("engine", "session", "end")
CONTRACT_VIOLATION: Final[Event] = ("engine", "contract", "violation")

#: Every event the library emits -> what it carries. Durations are in seconds.
#: Metadata always holds ``pool`` (the pool's label). Attach to ``("engine",)``
#: for all of them.
EVENTS: Final[Mapping[Event, str]] = MappingProxyType({
    POOL_START: "pool opened. measurements: size. metadata: pool, app",
    POOL_STOP: "pool closing. metadata: pool",
    WORKER_SPAWN: "a slot started a worker process. metadata: pool, slot, worker_id",
    WORKER_READY: "a worker sent its hello and is ready. metadata: pool, slot, "
                  "worker_id, pid",
    WORKER_EXIT: "a worker process ended (or failed to start). metadata: pool, slot, "
                 "worker_id, exit_code, signal, reason",
    WORKER_RESTART: "a slot schedules a rebuild. measurements: delay. metadata: pool, "
                    "slot, reason",
    WORKER_COOLDOWN: "a slot exceeded max_restarts in restart_period and cools down. "
                     "measurements: cooldown. metadata: pool, slot",
    WORKER_TRANSITION: "a worker changed lifecycle state. measurements: duration (time "
                       "in the old state). metadata: pool, slot, worker_id, old, new, reason",
    CHECKOUT: "a worker was checked out. measurements: wait. metadata: pool, worker_id, "
              "session",
    CHECKIN: "a lease was returned. metadata: pool, worker_id, clean",
    CALL: "a call ended. measurements: duration. metadata: pool, worker_id, command, "
          "outcome",
    HEALTH_OK: "an idle health check passed. metadata: pool, worker_id",
    HEALTH_FAILED: "an idle health check failed or was slow. metadata: pool, slot, "
                   "worker_id, failures (in a row), reason",
    BREAKER_TRANSITION: "the pool's circuit breaker changed state. metadata: pool, old, "
                        "new, reason",
    SESSION_BIND: "a session was bound to a worker. metadata: pool, session, slot, worker_id",
    SESSION_LOST: "a session's worker died; the session was unbound. metadata: pool, "
                  "session, slot, reason",
    SESSION_EXPIRE: "an idle session passed session_ttl; cleanup_session was sent. "
                    "metadata: pool, session, worker_id",
    SESSION_END: "end_session() released a session. metadata: pool, session",
    CONTRACT_VIOLATION: "a policy callback broke its contract (treated as Remove). "
                        "metadata: pool, callback, value (repr), slot",
})

# --- handler registry -----------------------------------------------------------

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_CACHE_LIMIT: Final = 1024


@attrs.frozen
class _Attached:
    handler_id: str
    prefixes: tuple[Event, ...] | None  # None: every event
    handler: Handler

    def wants(self, event: Event) -> bool:
        if self.prefixes is None:
            return True
        return any(event[: len(prefix)] == prefix for prefix in self.prefixes)


class _Registry:
    """An immutable set of handlers plus a per-event dispatch cache.

    attach/detach build a new registry instead of mutating this one, so
    :func:`emit` reads one consistent object without a lock, and a cache entry
    computed from an old registry can never leak into a new one.
    """

    __slots__ = ("cache", "handlers")

    def __init__(self, handlers: Mapping[str, _Attached]) -> None:
        self.handlers = handlers
        self.cache: dict[Event, tuple[_Attached, ...]] = {}

    def for_event(self, event: Event) -> tuple[_Attached, ...]:
        found = self.cache.get(event)
        if found is None:
            found = tuple(h for h in self.handlers.values() if h.wants(event))
            if len(self.cache) >= _CACHE_LIMIT:
                self.cache.clear()  # someone emits unbounded names: stay bounded
            self.cache[event] = found
        return found


# None while nothing is attached: emit() then costs one global read and a test.
_registry: _Registry | None = None
_mutate_lock = threading.Lock()  # serialises attach/detach only; emit never takes it


def _check_event(event: object) -> Event:
    if (not isinstance(event, tuple) or not event
            or not all(isinstance(part, str) for part in event)):
        raise ValueError(f"an event name is a non-empty tuple of str, got {event!r}")
    return event


def attach(handler_id: str, events: Iterable[Event] | None, handler: Handler) -> None:
    """Call ``handler(event, measurements, metadata)`` for matching events.

    ``events`` holds event names or prefixes of them; ``None`` matches every
    event. ``handler_id`` must be unique (``ValueError`` otherwise); pass it to
    :func:`detach`.
    """
    global _registry
    prefixes = None if events is None else tuple(_check_event(e) for e in events)
    if not callable(handler):
        raise ValueError(f"handler must be callable, got {handler!r}")
    with _mutate_lock:
        current = _registry.handlers if _registry is not None else {}
        if handler_id in current:
            raise ValueError(f"a telemetry handler with id {handler_id!r} is already attached")
        _registry = _Registry({**current, handler_id: _Attached(handler_id, prefixes, handler)})


def detach(handler_id: str) -> bool:
    """Remove a handler; False if no handler had that id."""
    global _registry
    with _mutate_lock:
        if _registry is None or handler_id not in _registry.handlers:
            return False
        rest = {k: v for k, v in _registry.handlers.items() if k != handler_id}
        _registry = _Registry(rest) if rest else None
        return True


def active() -> bool:
    """True if any handler is attached.

    Lets a hot path skip building measurements and metadata nobody will read::

        if telemetry.active():
            telemetry.emit(telemetry.CHECKOUT, {"wait": wait}, {"pool": name, ...})
    """
    return _registry is not None


def emit(
    event: Event,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Deliver an event to the handlers attached to it.

    A handler's ``Exception`` is logged, never propagated. Cheap when nothing is
    attached; guard the construction of costly arguments with :func:`active`.
    """
    registry = _registry
    if registry is None:
        return
    handlers = registry.for_event(event)
    if not handlers:
        return
    measured = _EMPTY if measurements is None else measurements
    meta = _EMPTY if metadata is None else metadata
    for attached in handlers:
        try:
            attached.handler(event, measured, meta)
        except Exception:
            logger.exception(
                "telemetry handler %r raised on event %r; it stays attached",
                attached.handler_id, event,
            )


@attrs.frozen
class CapturedEvent:
    """One event recorded by :func:`capture` (mappings are copied at emit time)."""

    event: Event
    measurements: Mapping[str, float]
    metadata: Mapping[str, Any]


_capture_ids = itertools.count(1)


@contextmanager
def capture(events: Iterable[Event] | None = None) -> Iterator[list[CapturedEvent]]:
    """Record matching events into a list while the block runs (tests, debugging)::

        with telemetry.capture([("engine", "worker")]) as seen:
            ...
        assert seen[0].event == telemetry.WORKER_SPAWN
    """
    seen: list[CapturedEvent] = []

    def record(event: Event, measurements: Mapping[str, float],
               metadata: Mapping[str, Any]) -> None:
        seen.append(CapturedEvent(event, dict(measurements), dict(metadata)))

    handler_id = f"engine.telemetry.capture-{next(_capture_ids)}"
    attach(handler_id, events, record)
    try:
        yield seen
    finally:
        detach(handler_id)


# --- latency histogram ------------------------------------------------------------

# Log-linear buckets, as in HdrHistogram: each power of two ("octave") is cut
# into _SUB equal sub-buckets. math.frexp gives the octave and the position in
# it without a log(), so record() is O(1). A value is reported as its
# sub-bucket's midpoint; the sub-bucket is at most 1/_SUB of its lower edge wide,
# so the relative error is at most 1 / (2 * _SUB) = 0.78% < 1%.
_SUB: Final = 64
_MIN_EXP: Final = math.frexp(1e-6)[1]  # octave holding 1 µs: [2**-20, 2**-19)
_MAX_EXP: Final = math.frexp(3600.0)[1]  # octave holding 1 hour: [2**11, 2**12)
_BUCKETS: Final = (_MAX_EXP - _MIN_EXP + 1) * _SUB  # 32 octaves -> 2048 counters
_LOWEST: Final = math.ldexp(0.5, _MIN_EXP)  # 2**-20 s ~ 0.95 µs


def _bucket_of(value: float) -> int:
    if value < _LOWEST:
        return 0  # below 1 µs: absolute error < 1 µs is what matters there
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, m in [0.5, 1)
    index = (exponent - _MIN_EXP) * _SUB + int((mantissa - 0.5) * (2 * _SUB))
    return min(index, _BUCKETS - 1)  # above the top octave: clamped (see class doc)


def _midpoint_of(index: int) -> float:
    octave, sub = divmod(index, _SUB)
    return math.ldexp((_SUB + sub + 0.5) / (2 * _SUB), octave + _MIN_EXP)


@attrs.frozen
class LatencySummary:
    """Frozen summary of a :class:`LatencyHistogram` (seconds; zeros when empty)."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    min: float = 0.0
    sum: float = 0.0


class LatencyHistogram:
    """A log-linear latency histogram: O(1) record, constant memory, <= 1% error.

    Percentiles of values between 1 µs and 1 hour are reported within 1% relative
    error (0.78% by construction); smaller values within 1 µs absolute; larger
    ones share one overflow bucket, reported as :attr:`max`. ``min``, ``max``,
    ``mean`` and the sum are exact, the 0th and 100th percentiles are ``min`` and
    ``max``, and every percentile lies within ``[min, max]``. Percentiles use the
    nearest-rank definition: the ``ceil(p / 100 * count)``-th smallest value.

    Written here rather than taken from ``hdrhistogram`` or ``ddsketch``: it is
    about sixty lines of pure Python, has no native extension to build, and the
    library needs only record and a few quantiles. Not thread-safe (the pool
    records from Trio tasks, which do not preempt each other).
    """

    __slots__ = ("_count", "_counts", "_hi", "_lo", "_max", "_min", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0
        # Lowest and highest non-empty buckets, so percentile() scans only those.
        self._lo = _BUCKETS
        self._hi = -1

    def record(self, value: float) -> None:
        """Add one observation, in seconds (>= 0 and finite)."""
        if not 0.0 <= value < math.inf:  # also rejects NaN
            raise ValueError(f"a latency must be finite and >= 0, got {value!r}")
        index = _bucket_of(value)
        self._counts[index] += 1
        self._count += 1
        self._sum += value
        # Plain comparisons: cheaper than min()/max() calls on this hot path.
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        if index < self._lo:
            self._lo = index
        if index > self._hi:
            self._hi = index

    @property
    def count(self) -> int:
        """Number of observations."""
        return self._count

    @property
    def min(self) -> float:
        """Smallest observation (0.0 when empty)."""
        return self._min if self._count else 0.0

    @property
    def max(self) -> float:
        """Largest observation (0.0 when empty)."""
        return self._max

    @property
    def sum(self) -> float:
        """Sum of the observations."""
        return self._sum

    @property
    def mean(self) -> float:
        """Exact arithmetic mean (0.0 when empty)."""
        return self._sum / self._count if self._count else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile, 0 <= p <= 100 (0.0 when empty)."""
        return self._percentiles((p,))[0]

    def snapshot(self) -> LatencySummary:
        """Count, p50, p90, p99, max, mean, min and sum, in one pass."""
        p50, p90, p99 = self._percentiles((50.0, 90.0, 99.0))
        return LatencySummary(
            count=self._count, p50=p50, p90=p90, p99=p99, max=self.max,
            mean=self.mean, min=self.min, sum=self._sum,
        )

    def _percentiles(self, ps: tuple[float, ...]) -> list[float]:
        for p in ps:
            if not 0.0 <= p <= 100.0:
                raise ValueError(f"a percentile must be within [0, 100], got {p!r}")
        if not self._count:
            return [0.0] * len(ps)
        # Nearest rank, 1-based; walk the buckets once for all requested ranks.
        ranks = sorted((max(1, math.ceil(p / 100.0 * self._count)), i) for i, p in enumerate(ps))
        out = [0.0] * len(ps)
        seen = 0
        pending = iter(ranks)
        rank, slot = next(pending)
        for index in range(self._lo, self._hi + 1):
            seen += self._counts[index]
            while seen >= rank:
                out[slot] = self._value_at(rank, index)
                try:
                    rank, slot = next(pending)
                except StopIteration:
                    return out
        raise AssertionError("histogram bucket counts disagree with its count")

    def _value_at(self, rank: int, index: int) -> float:
        # The extremes are known exactly; the overflow bucket (above ~1.1 h) has no
        # meaningful midpoint, and the largest value is the best estimate there.
        if rank == 1:
            return self._min
        if rank >= self._count or index == _BUCKETS - 1:
            return self._max
        return min(self._max, max(self._min, _midpoint_of(index)))


# --- metrics -------------------------------------------------------------------------

_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _check_name(name: str) -> str:
    # Names end up in Prometheus metric names: keep them to that alphabet.
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a metric name must match [a-zA-Z_][a-zA-Z0-9_]*, got {name!r}")
    return name


def _freeze_counters(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


def _freeze_latencies(value: Mapping[str, LatencySummary]) -> Mapping[str, LatencySummary]:
    return MappingProxyType(dict(value))


@attrs.frozen
class MetricsSnapshot:
    """Frozen copy of a :class:`Metrics`: counters and latency summaries by name."""

    counters: Mapping[str, int] = attrs.field(converter=_freeze_counters)
    latencies: Mapping[str, LatencySummary] = attrs.field(converter=_freeze_latencies)


class Metrics:
    """Named counters and latency histograms (the pool's ``pool.metrics()``).

    Names must match ``[a-zA-Z_][a-zA-Z0-9_]*`` (checked once, when a name is
    first used). Names given to the constructor appear in snapshots (at zero)
    before their first use, so exporters see a stable set of series.
    """

    __slots__ = ("_counters", "_histograms")

    def __init__(self, *, counters: Iterable[str] = (), histograms: Iterable[str] = ()) -> None:
        self._counters: dict[str, int] = {_check_name(n): 0 for n in counters}
        self._histograms: dict[str, LatencyHistogram] = {
            _check_name(n): LatencyHistogram() for n in histograms
        }

    def increment(self, name: str, n: int = 1) -> None:
        """Add ``n`` (>= 0: counters only go up) to counter ``name``."""
        if n < 0:
            raise ValueError(f"counters only go up: increment({name!r}, {n!r})")
        try:
            self._counters[name] += n
        except KeyError:
            self._counters[_check_name(name)] = n

    def observe(self, name: str, seconds: float) -> None:
        """Record a duration in histogram ``name``."""
        self.histogram(name).record(seconds)

    def histogram(self, name: str) -> LatencyHistogram:
        """The histogram called ``name``, created on first use."""
        found = self._histograms.get(name)
        if found is None:
            found = self._histograms[_check_name(name)] = LatencyHistogram()
        return found

    def counter(self, name: str) -> int:
        """Current value of counter ``name`` (0 if never incremented)."""
        return self._counters.get(name, 0)

    def snapshot(self) -> MetricsSnapshot:
        """A frozen copy of every counter and histogram summary."""
        return MetricsSnapshot(
            counters=self._counters,
            latencies={name: h.snapshot() for name, h in self._histograms.items()},
        )
