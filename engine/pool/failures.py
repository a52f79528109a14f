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


class FailureTracker:
    """Start failures, crashes and the breaker's view of them."""

    def __init__(self, size: int, breaker: CircuitBreaker, metrics: telemetry.Metrics) -> None:
        self._size = size
        self._breaker = breaker
        self._metrics = metrics
        self._failing_slots: set[int] = set()  # slots whose last start failed
        self._defect_reported = False
        #: The most recent start failure (wait_ready names its reason).
        self.last_start_error: WorkerStartError | None = None

    def worker_ready(self, slot: int) -> None:
        self._failing_slots.discard(slot)
        self._breaker.record_success()

    def worker_crashed(self, slot: int, worker: WorkerHandle, reason: str) -> None:
        self._metrics.increment("worker_crashes")
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
