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

from engine import telemetry
from engine.errors import WorkerStartError
from engine.pool.resilience import CircuitBreaker
from engine.process.handle import WorkerHandle

logger = logging.getLogger("engine.pool")

#: Pending expected deaths kept per pool (a chaos runner claims one per kill).
_MAX_EXPECTED = 1024


class FailureTracker:
    """Start failures, crashes and the breaker's view of them."""

    def __init__(self, size: int, breaker: CircuitBreaker, metrics: telemetry.Metrics) -> None:
        self._size = size
        self._breaker = breaker
        self._metrics = metrics
        self._failing_slots: set[int] = set()  # slots whose last start failed
        self._defect_reported = False
        # Workers someone is killing on purpose (Pool.expect_death), oldest
        # first; bounded, since a worker that dies another way is never removed.
        self._expected: dict[str, None] = {}
        #: The most recent start failure (wait_ready names its reason).
        self.last_start_error: WorkerStartError | None = None

    def expect_death(self, worker_id: str) -> None:
        self._expected[worker_id] = None
        if len(self._expected) > _MAX_EXPECTED:
            del self._expected[next(iter(self._expected))]

    def worker_ready(self, slot: int) -> None:
        self._failing_slots.discard(slot)
        self._breaker.record_success()

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
