"""Background upkeep: idle health checks, session expiry and idle retirement.

Each loop only *asks* the core for a lease or a retirement; it never touches a
worker that a caller holds. A probe runs through a lease like any caller, so a
health check can't race a real call on the same pipe, and its deadline is kept
by the pool's timer like a call's.

The loops see their pool only through a :class:`HealthContext`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from engine import telemetry
from engine.errors import CallTimeout, EngineError
from engine.pool.config import PoolConfig
from engine.pool.core import PoolCore, WaiterStatus
from engine.pool.deadlines import Deadlines
from engine.pool.lifecycle import WorkerState
from engine.pool.table import WorkerTable
from engine.pool.timer import Expirable
from engine.process.handle import WorkerHandle

logger = logging.getLogger("engine.health")


@attrs.frozen
class HealthContext:
    """What the upkeep loops need of their pool, and nothing else."""

    config: PoolConfig
    label: str
    core: PoolCore
    flush: Callable[[], None]
    table: WorkerTable
    clock: Callable[[], float]
    #: The pool timer's deadlines (a probe's health_timeout).
    deadlines: Deadlines[Expirable]
    #: Tell the pool-wide circuit breaker (kind, reason).
    breaker_failure: Callable[[str, str], None]
    end_session: Callable[[str], Awaitable[bool]]


async def run_health_checks(context: HealthContext) -> None:
    """Probe every idle worker once it has given no sign of life for
    ``health_interval``: neither used nor probed. A worker frozen while idle is
    therefore probed at most ``health_interval`` after its last call or probe,
    and its probe times out ``health_timeout`` later, which replaces it at once;
    the probe holds the worker's lease meanwhile, so no checkout is handed it.

    Probes run beside the loop, each in its own task, so one frozen worker's
    probe never delays the others'."""
    interval = context.config.health_interval
    assert interval is not None
    core = context.core
    # slot index -> (generation, when its last probe ended). A new generation
    # starts from its ready time (last_used), so the map never goes stale.
    probed: dict[int, tuple[int, float]] = {}
    probing: set[int] = set()

    async def probe(index: int, generation: int) -> None:
        try:
            await _probe(context, index)
        finally:
            probing.discard(index)
            probed[index] = (generation, context.clock())

    async with trio.open_nursery() as nursery:
        while True:
            now = context.clock()
            wake = now + interval
            for slot in core.slots:
                if slot.index in probing or slot.state not in _PROBED_STATES:
                    continue
                seen = slot.last_used
                generation, at = probed.get(slot.index, (-1, seen))
                if generation == slot.generation:
                    seen = max(seen, at)
                due = seen + interval
                if due > now:
                    wake = min(wake, due)
                elif slot.lease is None:
                    probing.add(slot.index)
                    nursery.start_soon(probe, slot.index, slot.generation)
            await trio.sleep(max(0.0, wake - context.clock()))


# Only idle workers are probed: a leased one is answering its caller (or its
# call's own deadline will end it).
_PROBED_STATES = (WorkerState.READY, WorkerState.DEGRADED)


class _ProbeDeadline:
    """A health probe's deadline: the worker's call ends with CallTimeout."""

    __slots__ = ("timeout", "worker")

    def __init__(self, worker: WorkerHandle, timeout: float) -> None:
        self.worker = worker
        self.timeout = timeout

    def deadline_passed(self) -> None:
        self.worker.time_out(self.timeout)


async def _probe(context: HealthContext, index: int) -> None:
    core = context.core
    waiter = core.request(purpose="health", target=index)
    context.flush()
    if waiter.status is not WaiterStatus.GRANTED:
        core.cancel(waiter.id)
        return
    core.receive(waiter.id)
    worker = context.table.worker(index)
    ok, reason = False, "no worker"
    answer: Any = None
    if worker is not None:
        timeout = context.config.health_timeout
        entry = context.deadlines.add(context.clock() + timeout,
                                      _ProbeDeadline(worker, timeout))
        try:
            answer = await worker.call("health", None)
            ok, reason = True, ""
        except CallTimeout:
            reason = f"no answer within health_timeout={timeout:g}s"
        except EngineError as exc:
            reason = str(exc)
        except BaseException:
            core.health_result(waiter.id, False, "probe cancelled")
            context.flush()
            raise
        finally:
            Deadlines.remove(entry)
    # A probe that timed out (or broke the framing) leaves the channel dirty:
    # a late reply would be read as the answer to the next request, so the
    # worker can never answer again. No point probing it again: replace it.
    unusable = worker is not None and worker.dirty
    if ok and unusable:
        ok, reason = False, "worker left dirty"
    if ok:  # failures are reported by the core, with the count in a row
        telemetry.emit(telemetry.HEALTH_OK, {},
                       {"pool": context.label, "slot": index,
                        "worker_id": worker.worker_id if worker is not None else None})
    core.health_result(waiter.id, ok, reason, unusable=unusable)
    # Like start failures, health failures count towards the pool-wide breaker
    # only when most of the pool is failing, not for one sick worker.
    degraded = core.state_counts[WorkerState.DEGRADED]
    if not ok and 2 * degraded > context.config.size:
        context.breaker_failure("health_failure", reason)
    if ok and worker is not None and worker.dirty is False:
        _check_rss(context, index, answer)
    context.flush()


def _check_rss(context: HealthContext, index: int, answer: Any) -> None:
    limit = context.config.max_rss_mb
    if limit is None or not isinstance(answer, dict):
        return
    rss = answer.get("rss_mb")
    if isinstance(rss, int | float) and rss > limit:
        context.core.retire(index, f"rss {rss:.0f} MB above max_rss_mb={limit:g}")


async def run_session_expiry(context: HealthContext) -> None:
    ttl = context.config.session_ttl
    assert ttl is not None
    while True:
        await trio.sleep(min(ttl / 2, 1.0))
        for session in context.core.expired_sessions(ttl):
            telemetry.emit(telemetry.SESSION_EXPIRE, {},
                           {"pool": context.label, "session": session})
            try:
                await context.end_session(session)
            except EngineError as exc:
                logger.info("could not clean up expired session %r: %s", session, exc)


async def run_idle_retirement(context: HealthContext) -> None:
    idle = context.config.idle_retire
    assert idle is not None
    core = context.core
    while True:
        await trio.sleep(min(idle / 2, 1.0))
        live = [s for s in core.slots if s.state.value in ("ready", "busy", "degraded",
                                                            "draining", "starting")]
        spare = len(live) - context.config.min_size
        now = trio.current_time()
        for slot in core.slots:
            if spare <= 0:
                break
            if slot.state.value == "ready" and slot.lease is None and not slot.sessions \
                    and now - slot.last_used >= idle and not core.queue:
                core.shrink(slot.index, f"idle for {now - slot.last_used:.1f}s")
                spare -= 1
        context.flush()
