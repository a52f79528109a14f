"""One task per slot: spawn, watch, stop, and rebuild with backoff.

Kills and waits happen here, never in the bookkeeping path of a checkout: the
core only *asks* for a start or a stop (an action) and the slot task does it.
Restart policy per slot: the first restart after a healthy run is immediate,
then exponential with full jitter up to a maximum, reset after a healthy
period; more than ``max_restarts`` in ``restart_period`` puts the slot in a
cooldown. A start that always fails therefore costs a bounded number of spawns
per second and never blocks the other slots.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio
import trio_util

from engine import telemetry
from engine.errors import WorkerStartError
from engine.pool.resilience import Backoff, RestartIntensity
from engine.process.handle import ExitInfo, SpawnRequest, WorkerHandle

if TYPE_CHECKING:
    from engine.pool.pool import Pool

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


class SlotSupervisor:
    def __init__(self, pool: Pool, index: int, rng: random.Random) -> None:
        self.pool = pool
        self.index = index
        self.rng = rng
        config = pool.config
        low, high, jitter = config.restart_backoff
        self.backoff = Backoff(initial=low, maximum=high, multiplier=2.0,
                               reset_after=config.healthy_period, jitter=jitter)
        self.intensity = RestartIntensity(max_restarts=config.max_restarts,
                                          period=config.restart_period, clock=pool.now)
        self.start_wanted = trio.Event()
        self.stop_wanted = trio.Event()
        self.stop_reason = ""
        self.stop_graceful = True
        self.failed_last = False
        self.start_failures = 0
        self.run_scope = trio.CancelScope()
        self.running = False
        self.looping = False
        self.last_exit: ExitInfo | None = None
        self.killed_by_pool = False  # the pool killed it on purpose (shutdown)

    def request_start(self) -> None:
        self.start_wanted.set()

    def request_stop(self, reason: str, graceful: bool) -> None:
        self.stop_reason = reason
        self.stop_graceful = graceful
        self.stop_wanted.set()
        if self.pool.workers[self.index] is None:
            # Still starting: abandon the start (the factory kills and reaps it).
            self.run_scope.cancel()

    async def run(self) -> None:
        while True:
            await self.start_wanted.wait()
            self.start_wanted = trio.Event()
            if self.pool.closing:
                return
            await self._pause_before_start()
            if self.pool.closing:
                return
            await self._run_one_worker()

    async def _pause_before_start(self) -> None:
        delay = self.backoff.next_delay(self.rng) if self.failed_last else 0.0
        # Intensity counts crash loops only (failed starts, deaths before serving).
        if self.failed_last and self.looping and not self.intensity.record():
            delay = max(delay, self.pool.config.restart_cooldown)
            telemetry.emit(telemetry.WORKER_COOLDOWN, {"cooldown": delay},
                           {"pool": self.pool.label, "slot": self.index})
            logger.warning("slot %d restarted more than %d times in %gs; cooling down %gs",
                           self.index, self.pool.config.max_restarts,
                           self.pool.config.restart_period, delay)
        if self.pool.core.slots[self.index].generation > 0:
            telemetry.emit(telemetry.WORKER_RESTART, {"delay": delay},
                           {"pool": self.pool.label, "slot": self.index,
                            "reason": "crash loop" if self.looping else "replacement"})
        if delay > 0:
            with trio.move_on_after(delay):
                await self.pool.closed_event.wait()

    async def _run_one_worker(self) -> None:
        pool = self.pool
        generation = pool.core.worker_starting(self.index)
        pool.flush()
        config = pool.config
        request = SpawnRequest(
            worker_id=f"{pool.label}-{self.index}.{generation}", app=config.app,
            start_timeout=config.start_timeout, launcher=config.launcher,
            python=config.python, env=config.env, max_frame_size=config.max_frame_size,
            stderr_tail_lines=config.stderr_tail_lines, busy_poll=config.busy_poll,
        )
        self.stop_wanted = trio.Event()
        self.stop_reason = ""
        self.run_scope = trio.CancelScope()
        self.last_exit = None
        self.killed_by_pool = False
        reason = "start abandoned"
        crashed = False
        defect: IncompleteWorkerHandle | None = None
        telemetry.emit(telemetry.WORKER_SPAWN, {},
                       {"pool": pool.label, "slot": self.index, "worker_id": request.worker_id})
        try:
            with self.run_scope:
                async with pool.factory(request) as worker:
                    defect = check_handle(worker)
                    if defect is None:
                        reason, crashed = await self._serve(worker)
                    else:
                        reason = f"unusable worker handle: {defect}"
        except WorkerStartError as exc:
            reason, crashed = f"start failed: {exc.reason}", True
            self.looping = True
            self.start_failures += 1
            pool.record_start_failure(self.index, exc)
        except Exception as exc:
            # A worker factory bug must not take the whole pool down: count it as
            # a failed start and let backoff pace the retries.
            logger.exception("worker factory for slot %d failed", self.index)
            reason, crashed = f"start failed: {type(exc).__name__}: {exc}", True
            self.looping = True
            self.start_failures += 1
            pool.record_start_failure(self.index, WorkerStartError(
                f"{type(exc).__name__}: {exc}", worker_id=request.worker_id))
        finally:
            pool.workers[self.index] = None
            self.failed_last = crashed
            pool.core.worker_exited(self.index, reason)
            pool.flush()
            info = self.last_exit
            telemetry.emit(telemetry.WORKER_EXIT, {}, {
                "pool": pool.label, "slot": self.index, "reason": reason,
                "worker_id": request.worker_id,
                "exit_code": info.exit_code if info is not None else None,
                "signal": info.signal if info is not None else None,
            })
        if defect is not None and not pool.handle_defect_reported:
            # A programming error, not a failing app: it fails the pool (once,
            # however many slots find it), as any TypeError would.
            pool.handle_defect_reported = True
            raise defect

    async def _serve(self, worker: WorkerHandle) -> tuple[str, bool]:
        """Hand the worker to the core and wait until it dies or must stop."""
        pool = self.pool
        started = trio.current_time()
        pool.workers[self.index] = worker
        pool.core.worker_ready(self.index, worker.worker_id, worker.pid)
        pool.flush()
        self.start_failures = 0
        pool.breaker_success()
        telemetry.emit(telemetry.WORKER_READY, {},
                       {"pool": pool.label, "slot": self.index, "worker_id": worker.worker_id,
                        "pid": worker.pid})
        await trio_util.wait_any(worker.wait_exited, self.stop_wanted.wait)
        # A worker that served callers and was then killed says nothing about the
        # app: its replacement starts at once. Backoff is for crash loops: starts
        # that fail, and workers that die before serving anyone.
        served = pool.core.slots[self.index].leases_granted > 0
        self.looping = not (served or trio.current_time() - started >= pool.config.healthy_period)
        if not self.looping:
            self.backoff.reset()
        info = self.last_exit = worker.exit_info
        # We have not stopped it yet (that happens when the factory's block ends),
        # so an exit status here means the worker died on its own.
        if info is not None and not self.killed_by_pool:
            how = f"signal {info.signal}" if info.signal is not None \
                else f"exit code {info.exit_code}"
            reason = f"crashed: {how}"
            pool.record_crash(self.index, worker, reason)
            return reason, True
        if not self.stop_graceful:
            worker.kill()
        return self.stop_reason or "stopped", False
