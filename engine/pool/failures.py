"""What the pool makes of its slot tasks' news: logs, metrics and the breaker.

The slot tasks (:mod:`engine.pool.supervisor`) report starts, crashes and
failed starts through the :class:`~engine.pool.supervisor.SupervisionEvents`
interface; :class:`FailureTracker` is the pool's implementation. The circuit
breaker is pool-wide: it hears of start failures only while *most* slots are
failing, so one slot that keeps failing is paced by its own backoff and never
shuts out the callers the healthy slots serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio_util

from engine import telemetry
from engine.errors import AppStartFailed, WorkerStartError
from engine.pool.core import Slot
from engine.pool.lifecycle import WorkerState
from engine.pool.resilience import CircuitBreaker
from engine.process.handle import WorkerHandle

logger = logging.getLogger("engine.pool")

#: Pending expected deaths kept per pool (a chaos runner claims one per kill).
_MAX_EXPECTED = 1024


class FailureTracker:
    """Start failures, crashes and the breaker's view of them."""

    def __init__(self, size: int, breaker: CircuitBreaker, metrics: telemetry.Metrics, *,
                 slots: Sequence[Slot] = (), app: str = "", pool: str | None = None,
                 on_unstartable: Callable[[], None] = lambda: None) -> None:
        self._size = size
        self._breaker = breaker
        self._metrics = metrics
        self._slots = slots
        self._app = app
        self._pool = pool
        self._on_unstartable = on_unstartable
        self._failing_slots: set[int] = set()  # slots whose last start failed
        self._started_slots: set[int] = set()  # slots whose last start succeeded
        self._failures = 0  # failed starts since a worker last started
        self._defect_reported = False
        # Workers someone is killing on purpose (Pool.expect_death), oldest
        # first; bounded, since a worker that dies another way is never removed.
        self._expected: dict[str, None] = {}
        #: The most recent start failure (wait_ready names its reason).
        self.last_start_error: WorkerStartError | None = None
        #: Counts start outcomes: wait_ready wakes on each to re-check.
        self.outcomes = trio_util.AsyncValue(0)

    @property
    def current_start_error(self) -> WorkerStartError | None:
        """The last start failure while some slot's last start failed (not one
        from long ago, since repaired)."""
        return self.last_start_error if self._failing_slots else None

    def unstartable(self) -> AppStartFailed | None:
        """The error for a pool no worker of which can start, or None.

        True when the last start of every slot that has tried one failed, and
        no slot is still in its first start: then no worker is live, and
        waiting for the next attempt (after a backoff) would only run down the
        checkout timeout. A new error each time (each raise owns its traceback).
        """
        last = self.last_start_error
        if last is None or self._started_slots or not self._failing_slots:
            return None
        for slot in self._slots:
            if slot.index not in self._failing_slots and slot.state is WorkerState.STARTING:
                return None  # its first start may still succeed
        error = AppStartFailed(last=last, app=self._app, failures=self._failures,
                               pool=self._pool)
        error.__cause__ = last
        return error

    def expect_death(self, worker_id: str) -> None:
        self._expected[worker_id] = None
        if len(self._expected) > _MAX_EXPECTED:
            del self._expected[next(iter(self._expected))]

    def worker_ready(self, slot: int) -> None:
        self._failing_slots.discard(slot)
        self._started_slots.add(slot)
        self._failures = 0
        self._breaker.record_success()
        self.outcomes.value += 1

    def worker_crashed(self, slot: int, worker: WorkerHandle, reason: str) -> None:
        self._metrics.increment("worker_crashes")
        if self._expected.pop(worker.worker_id, False) is None:
            # Planned by the caller: counted (its summary reports it), not shouted.
            self._metrics.increment("expected_deaths")
            logger.debug("worker %s (pid %s) %s (expected)", worker.worker_id, worker.pid,
                         reason)
            return
        logger.warning("worker %s (pid %s) %s", worker.worker_id, worker.pid, reason)

    def start_failed(self, slot: int, error: WorkerStartError, consecutive: int) -> None:
        self.last_start_error = error
        self._metrics.increment("worker_start_failures")
        self._failing_slots.add(slot)
        self._started_slots.discard(slot)
        self._failures += 1
        self.outcomes.value += 1
        if self.unstartable() is not None:
            self._on_unstartable()
        if 2 * len(self._failing_slots) > self._size:
            self._breaker.record_failure("start_failure", error.reason)
        # A crash-looping slot would flood the log: report the 1st, 2nd, 4th,
        # 8th... consecutive failure of a slot.
        if consecutive & (consecutive - 1) == 0:
            logger.warning("%s (%d consecutive start failures on slot %d)",
                           error, consecutive, slot)

    def handle_defect(self, error: TypeError) -> bool:
        first = not self._defect_reported
        self._defect_reported = True
        return first
