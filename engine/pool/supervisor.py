"""One task per slot: spawn, watch, stop, and rebuild with backoff.

Kills and waits happen here, never in the bookkeeping path of a checkout: the
core only *asks* for a start or a stop (an action) and the slot task does it.
Restart policy per slot: the first restart after a healthy run is immediate,
then exponential with full jitter up to a maximum, reset after a healthy
period; more than ``max_restarts`` in ``restart_period`` puts the slot in a
cooldown. A start that always fails therefore costs a bounded number of spawns
per second and never blocks the other slots.

A slot task sees its pool only through a :class:`SupervisorContext`: the
config, the core, a way to flush the core's actions, the pool's closing event,
the worker factory and the :class:`SupervisionEvents` it reports to. Its own
:class:`~engine.pool.table.WorkerRow` is the one place it writes: the handle of
its worker while that worker is ready.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
import trio_util

from engine import telemetry
from engine.errors import WorkerStartError
from engine.pool.config import PoolConfig, spawn_request
from engine.pool.core import PoolCore
from engine.pool.resilience import Backoff, RestartIntensity
from engine.pool.table import WorkerRow
from engine.process.handle import ExitInfo, WorkerFactory, WorkerHandle

logger = logging.getLogger("engine.supervisor")


class IncompleteWorkerHandle(TypeError):
    """A worker factory yielded a handle that lacks a required WorkerHandle method."""


def check_handle(worker: object) -> IncompleteWorkerHandle | None:
    """The error for a handle lacking ``time_out``, or None if it has it.

    A handle whose class names WorkerHandle as its base but does not implement
    it inherits the protocol's stub, which ends nothing: that counts as
    missing. (Checked once per worker, not per call.)"""
    method = getattr(worker, "time_out", None)
    if callable(method) and getattr(method, "__func__", None) is not WorkerHandle.time_out:
        return None
    return IncompleteWorkerHandle(
        f"the worker handle {type(worker).__qualname__} (from worker_factory) does not "
        "implement time_out(timeout): every WorkerHandle must, custom ones included. The "
        "pool keeps call and health-probe deadlines on one timer and ends an overdue call "
        "only by calling worker.time_out(timeout), which must make that call raise "
        "CallTimeout (see engine.process.handle.WorkerHandle)")


class SupervisionEvents(Protocol):
    """What slot tasks report to the pool (logs, metrics, the circuit breaker)."""

    def worker_ready(self, slot: int) -> None: ...

    def worker_crashed(self, slot: int, worker: WorkerHandle, reason: str) -> None: ...

    def start_failed(self, slot: int, error: WorkerStartError, consecutive: int) -> None: ...

    def handle_defect(self, error: IncompleteWorkerHandle) -> bool:
        """A handle lacks a required method; True if this is the first report."""
        ...


@attrs.frozen
class SupervisorContext:
    """What a slot task needs of its pool, and nothing else."""

    config: PoolConfig
    label: str
    core: PoolCore
    flush: Callable[[], None]
    #: Set when the pool starts closing: no new start, and backoffs end early.
    closing: trio.Event
    factory: WorkerFactory
    events: SupervisionEvents
    clock: Callable[[], float]


class SlotSupervisor:
    """The slot task of one :class:`WorkerRow` (its worker's whole life)."""

    def __init__(self, context: SupervisorContext, row: WorkerRow,
                 rng: random.Random) -> None:
        self._context = context
        self._row = row
        self.index = row.index
        self._rng = rng
        config = context.config
        low, high, jitter = config.restart_backoff
        self._backoff = Backoff(initial=low, maximum=high, multiplier=2.0,
                                reset_after=config.healthy_period, jitter=jitter)
        self._intensity = RestartIntensity(max_restarts=config.max_restarts,
                                           period=config.restart_period, clock=context.clock)
        self._start_wanted = trio.Event()
        self._stop_wanted = trio.Event()
        self._stop_reason = ""
        self._stop_graceful = True
        self._failed_last = False
        self._looping = False
        self._removed_unserved = False
        self._start_failures = 0
        self._run_scope = trio.CancelScope()
        self._last_exit: ExitInfo | None = None
        self._killed_by_pool = False

    def request_start(self) -> None:
        self._start_wanted.set()

    def request_stop(self, reason: str, graceful: bool) -> None:
        self._stop_reason = reason
        self._stop_graceful = graceful
        self._stop_wanted.set()
        if self._row.worker is None:
            # Still starting: abandon the start (the factory kills and reaps it).
            self._run_scope.cancel()

    def expect_kill(self) -> None:
        """The pool is about to kill this slot's worker on purpose (shutdown):
        its death is a stop, not a crash."""
        self._killed_by_pool = True

    async def run(self) -> None:
        closing = self._context.closing
        while True:
            await self._start_wanted.wait()
            self._start_wanted = trio.Event()
            if closing.is_set():
                return
            await self._pause_before_start()
            if closing.is_set():
                return
            await self._run_one_worker()

    async def _pause_before_start(self) -> None:
        context = self._context
        config = context.config
        delay = self._backoff.next_delay(self._rng) if self._failed_last else 0.0
        # Intensity counts crash loops only (failed starts, deaths before serving).
        if self._failed_last and self._looping and not self._intensity.record():
            delay = max(delay, config.restart_cooldown)
            telemetry.emit(telemetry.WORKER_COOLDOWN, {"cooldown": delay},
                           {"pool": context.label, "slot": self.index})
            logger.warning("slot %d restarted more than %d times in %gs; cooling down %gs",
                           self.index, config.max_restarts, config.restart_period, delay)
        if context.core.slots[self.index].generation > 0:
            telemetry.emit(telemetry.WORKER_RESTART, {"delay": delay},
                           {"pool": context.label, "slot": self.index,
                            "reason": "crash loop" if self._looping else "replacement"})
        if delay > 0:
            with trio.move_on_after(delay):
                await context.closing.wait()

    async def _run_one_worker(self) -> None:
        context = self._context
        core = context.core
        generation = core.worker_starting(self.index)
        context.flush()
        request = spawn_request(context.config, context.label, self.index, generation)
        self._stop_wanted = trio.Event()
        self._stop_reason = ""
        self._stop_graceful = True
        self._run_scope = trio.CancelScope()
        self._last_exit = None
        self._killed_by_pool = False
        self._removed_unserved = False
        reason = "start abandoned"
        crashed = start_failed = False
        defect: IncompleteWorkerHandle | None = None
        telemetry.emit(telemetry.WORKER_SPAWN, {}, {"pool": context.label, "slot": self.index,
                                                    "worker_id": request.worker_id})
        try:
            with self._run_scope:
                async with context.factory(request) as worker:
                    defect = check_handle(worker)
                    if defect is None:
                        reason, crashed = await self._serve(worker)
                    else:
                        reason = f"unusable worker handle: {defect}"
        except WorkerStartError as exc:
            self._start_failed(exc)
            reason, start_failed = f"start failed: {exc.reason}", True
        except Exception as exc:
            # A worker factory bug must not take the whole pool down: count it as
            # a failed start and let backoff pace the retries.
            logger.exception("worker factory for slot %d failed", self.index)
            self._start_failed(WorkerStartError(f"{type(exc).__name__}: {exc}",
                                                worker_id=request.worker_id))
            reason, start_failed = f"start failed: {type(exc).__name__}: {exc}", True
        finally:
            self._row.worker = None
            # Backoff (and the intensity limit) for crash loops: failed starts,
            # and workers that died or were removed as unfit before serving
            # anyone (a policy that refuses every worker would otherwise make
            # the slot restart it in a tight loop).
            self._failed_last = crashed or start_failed or self._removed_unserved
            core.worker_exited(self.index, reason, crashed=crashed, start_failed=start_failed)
            context.flush()
            info = self._last_exit
            telemetry.emit(telemetry.WORKER_EXIT, {}, {
                "pool": context.label, "slot": self.index, "reason": reason,
                "worker_id": request.worker_id,
                "exit_code": info.exit_code if info is not None else None,
                "signal": info.signal if info is not None else None,
            })
        if defect is not None and context.events.handle_defect(defect):
            # A programming error, not a failing app: it fails the pool (once,
            # however many slots find it), as any TypeError would.
            raise defect

    def _start_failed(self, error: WorkerStartError) -> None:
        self._looping = True
        self._start_failures += 1
        self._context.events.start_failed(self.index, error, self._start_failures)

    async def _serve(self, worker: WorkerHandle) -> tuple[str, bool]:
        """Hand the worker to the core and wait until it dies or must stop.

        Returns why it ended and whether it crashed (died on its own)."""
        context = self._context
        core = context.core
        started = trio.current_time()
        self._row.worker = worker
        core.worker_ready(self.index, worker.worker_id, worker.pid)
        context.flush()
        self._start_failures = 0
        context.events.worker_ready(self.index)
        telemetry.emit(telemetry.WORKER_READY, {},
                       {"pool": context.label, "slot": self.index,
                        "worker_id": worker.worker_id, "pid": worker.pid})
        await trio_util.wait_any(worker.wait_exited, self._stop_wanted.wait)
        # A worker that served callers and was then killed says nothing about the
        # app: its replacement starts at once. Backoff is for crash loops: starts
        # that fail, and workers that die before serving anyone.
        served = core.slots[self.index].leases_granted > 0
        self._looping = not (served or trio.current_time() - started
                             >= context.config.healthy_period)
        if not self._looping:
            self._backoff.reset()
        info = self._last_exit = worker.exit_info
        # We have not stopped it yet (that happens when the factory's block ends),
        # so an exit status here means the worker died on its own.
        if info is not None and not self._killed_by_pool:
            how = f"signal {info.signal}" if info.signal is not None \
                else f"exit code {info.exit_code}"
            reason = f"crashed: {how}"
            context.events.worker_crashed(self.index, worker, reason)
            return reason, True
        if not self._stop_graceful:
            # Removed as unfit (hand-off check, policy, health); a graceful stop
            # (recycling, idle retirement, shutdown) is replaced at once.
            self._removed_unserved = self._looping
            worker.kill()
        return self._stop_reason or "stopped", False
