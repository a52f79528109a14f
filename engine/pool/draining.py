"""Draining: a worker whose call was abandoned in flight comes back to service.

Cooperative cancellation (design section 8): a caller cancelled (or past its
``call_timeout``) with its request in flight gets ``Cancelled``/``CallTimeout``
at once, and its lease's check-in puts the worker in DRAINING instead of
killing it (the core's ``DrainWorker`` action). One task per such worker, in
the pool's own nursery, has the handle abandon the request and read its one
reply back (:meth:`~engine.process.handle.DrainableHandle.drain_abandoned`,
bounded by ``cancel_grace``), then tells the core: READY again, clean, with
every session bound to it; or, if the grace ended or the worker broke, stopped
and replaced as before. Nobody is granted the worker before that, so no reply
of an abandoned request ever reaches a later caller.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from engine import telemetry
from engine.pool.core import PoolCore
from engine.pool.table import WorkerTable
from engine.process.handle import DrainFailed

# How long a worker whose pipe closed under a drain may take to exit before it
# is stopped as any failed drain is (a process that closed its pipes and lives
# on is not dying: stop it).
EXIT_AFTER_PIPE_CLOSED = 1.0


@attrs.frozen
class DrainContext:
    """What a drain task needs of its pool, and nothing else."""

    label: str
    core: PoolCore
    flush: Callable[[], None]
    table: WorkerTable
    clock: Callable[[], float]
    metrics: telemetry.Metrics


async def drain_worker(context: DrainContext, index: int, generation: int) -> None:
    """Give slot ``index``'s worker (of that ``generation``) back, or have it stopped."""
    worker = context.table.worker(index)
    started = context.clock()
    ok, reason = False, "its worker is gone"
    drain = getattr(worker, "drain_abandoned", None)
    try:
        if worker is not None and drain is not None:
            try:
                how = await drain()
            except DrainFailed as exc:
                reason = str(exc)
                if exc.worker_gone:
                    # The pipe closed first; the process's exit follows at once
                    # (a signal, a crash). Wait for it, so that the slot task
                    # reports the exit with its real cause ("crashed: signal
                    # 9") before this drain's failure could stop the worker
                    # as if the pool had removed it.
                    with trio.move_on_after(EXIT_AFTER_PIPE_CLOSED):
                        await worker.wait_exited()
            else:
                ok, reason = True, f"abandoned request {how}"
    finally:
        # Also when cancelled (the pool's tasks end only once every worker has
        # stopped): a drain that did not finish stops its worker.
        context.core.drained(index, generation, ok, reason)
        context.flush()
        context.metrics.increment("drains_clean" if ok else "drains_killed")
        telemetry.emit(telemetry.WORKER_DRAINED, {"duration": context.clock() - started}, {
            "pool": context.label, "slot": index,
            "worker_id": worker.worker_id if worker is not None else None,
            "pid": worker.pid if worker is not None else None,
            "outcome": "clean" if ok else "killed", "reason": reason})
