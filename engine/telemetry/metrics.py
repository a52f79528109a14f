"""Latency histograms and named metrics (the pool's ``pool.metrics()``).

:class:`LatencyHistogram` keeps log-linear buckets (< 1% relative error,
constant memory); :class:`Metrics` keeps counters and histograms by name, and
:meth:`Metrics.snapshot` returns a frozen :class:`MetricsSnapshot` that
:func:`engine.telemetry.prometheus.render` formats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

import attrs

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
