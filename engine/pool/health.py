"""Background upkeep: idle health checks, session expiry and idle retirement.

Each loop only *asks* the core for a lease or a retirement; it never touches a
worker that a caller holds. A probe runs through a lease like any caller, so a
health check can't race a real call on the same pipe.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from engine import telemetry
from engine.errors import CallTimeout, EngineError
from engine.pool.core import WaiterStatus
from engine.pool.deadlines import Deadlines
from engine.pool.lifecycle import WorkerState
from engine.process.handle import WorkerHandle

if TYPE_CHECKING:
    from engine.pool.pool import Pool

logger = logging.getLogger("engine.health")


async def run_health_checks(pool: Pool) -> None:
    interval = pool.config.health_interval
    assert interval is not None
    while True:
        await trio.sleep(interval)
        async with trio.open_nursery() as nursery:
            for index in pool.core.health_candidates(idle_for=interval):
                nursery.start_soon(_probe, pool, index)


async def _probe(pool: Pool, index: int) -> None:
    waiter = pool.core.request(purpose="health", target=index)
    pool.flush()
    if waiter.status is not WaiterStatus.GRANTED:
        pool.core.cancel(waiter.id)
        return
    pool.core.receive(waiter.id)
    worker = pool.workers[index]
    ok, reason = False, "no worker"
    answer: Any = None
    if worker is not None:
        timeout = pool.config.health_timeout
        # The probe's deadline is kept by the pool's timer, like a call's.
        entry = pool.timer.deadlines.add(pool.now() + timeout, _ProbeDeadline(worker, timeout))
        try:
            answer = await worker.call("health", None)
            ok, reason = True, ""
        except CallTimeout:
            reason = f"no answer within health_timeout={timeout:g}s"
        except EngineError as exc:
            reason = str(exc)
        except BaseException:
            pool.core.health_result(waiter.id, False, "probe cancelled")
            pool.flush()
            raise
        finally:
            Deadlines.remove(entry)
    if ok and worker is not None and worker.dirty:
        ok, reason = False, "worker left dirty"
    if ok:  # failures are reported by the core, with the count in a row
        telemetry.emit(telemetry.HEALTH_OK, {},
                       {"pool": pool.label, "slot": index,
                        "worker_id": worker.worker_id if worker is not None else None})
    pool.core.health_result(waiter.id, ok, reason)
    # Like start failures, health failures count towards the pool-wide breaker
    # only when most of the pool is failing, not for one sick worker.
    degraded = pool.core.state_counts[WorkerState.DEGRADED]
    if not ok and 2 * degraded > pool.config.size:
        pool.breaker.record_failure("health_failure", reason)
    if ok and worker is not None and worker.dirty is False:
        _check_rss(pool, index, answer)
    pool.flush()


class _ProbeDeadline:
    """A health probe's deadline: the worker's call ends with CallTimeout."""

    __slots__ = ("timeout", "worker")

    def __init__(self, worker: WorkerHandle, timeout: float) -> None:
        self.worker = worker
        self.timeout = timeout

    def deadline_passed(self) -> None:
        self.worker.time_out(self.timeout)


def _check_rss(pool: Pool, index: int, answer: Any) -> None:
    limit = pool.config.max_rss_mb
    if limit is None or not isinstance(answer, dict):
        return
    rss = answer.get("rss_mb")
    if isinstance(rss, int | float) and rss > limit:
        pool.core.retire(index, f"rss {rss:.0f} MB above max_rss_mb={limit:g}")


async def run_session_expiry(pool: Pool) -> None:
    ttl = pool.config.session_ttl
    assert ttl is not None
    while True:
        await trio.sleep(min(ttl / 2, 1.0))
        for session in pool.core.expired_sessions(ttl):
            telemetry.emit(telemetry.SESSION_EXPIRE, {},
                           {"pool": pool.label, "session": session})
            try:
                await pool.end_session(session)
            except EngineError as exc:
                logger.info("could not clean up expired session %r: %s", session, exc)


async def run_idle_retirement(pool: Pool) -> None:
    idle = pool.config.idle_retire
    assert idle is not None
    while True:
        await trio.sleep(min(idle / 2, 1.0))
        core = pool.core
        live = [s for s in core.slots if s.state.value in ("ready", "busy", "degraded",
                                                            "starting")]
        spare = len(live) - pool.config.min_size
        now = trio.current_time()
        for slot in core.slots:
            if spare <= 0:
                break
            if slot.state.value == "ready" and slot.lease is None and not slot.sessions \
                    and now - slot.last_used >= idle and not core.queue:
                core.shrink(slot.index, f"idle for {now - slot.last_used:.1f}s")
                spare -= 1
        pool.flush()
