"""open_pool, Pool and Lease: the Trio shell around the sans-IO core.

The shell turns core actions into I/O: it wakes waiters, asks slot tasks to
start or stop workers, and emits telemetry. Checkout bookkeeping never awaits
anything but the waiter's own event, so a checkout can't be blocked by a slow
kill or spawn, and every race of the hand-off is decided inside the core.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import attrs
import trio
import trio_util

from engine import telemetry
from engine.errors import (
    CallTimeout,
    EngineError,
    PoolClosed,
    PoolTimeout,
    PoolUnavailable,
    ProtocolError,
    WorkerCrashed,
    WorkerStartError,
)
from engine.pool.config import PoolConfig, make_config
from engine.pool.contract import (
    CheckinOutcome,
    CheckoutRequest,
    DefaultPolicy,
    Ok,
    Remove,
    Verdict,
    WorkerInfo,
    vet_checkin,
    vet_checkout,
)
from engine.pool.core import (
    Emit,
    PoolCore,
    Slot,
    StartWorker,
    StopWorker,
    Waiter,
    WaiterStatus,
    Wake,
)
from engine.pool.deadlines import Deadlines
from engine.pool.lease import LeaseReleased
from engine.pool.lifecycle import Transition, WorkerState
from engine.pool.resilience import CircuitBreaker, Decision, Retry
from engine.pool.supervisor import IncompleteWorkerHandle, SlotSupervisor
from engine.pool.timer import PoolTimer
from engine.process.handle import WorkerFactory, WorkerHandle

logger = logging.getLogger("engine.pool")
_pool_ids = itertools.count(1)
_OK_VERDICT = Verdict(Ok())
_OUTCOME_COUNTERS: dict[str, str] = {}


@attrs.frozen
class PoolStatistics:
    """A snapshot of the pool. ``busy`` counts leased workers (health probes too)."""

    name: str | None
    size: int
    ready: int
    busy: int
    starting: int
    degraded: int
    stopping: int
    stopped: int
    waiting: int
    sessions: int
    restarts: int
    crashes: int
    start_failures: int
    leases: int
    breaker: str
    closed: bool


@attrs.frozen
class WorkerSnapshot:
    slot: int
    worker_id: str | None
    pid: int | None
    state: str
    calls: int
    sessions: tuple[str, ...]
    history: tuple[Transition, ...]


def _default_factory(request: Any) -> Any:
    from engine.process.spawn import open_process_worker

    return open_process_worker(request)


class Lease:
    """Exclusive use of one worker until the ``checkout`` block ends."""

    __slots__ = ("_pool", "_waiter", "_worker", "calls", "error", "forced", "in_call",
                 "released", "timeout")

    def __init__(self, pool: Pool, waiter: Waiter, worker: WorkerHandle) -> None:
        self._pool = pool
        self._waiter = waiter
        self._worker = worker
        self.released = False
        self.forced = False
        self.calls = 0
        self.error: BaseException | None = None
        # The call in flight's timeout, for the CallTimeout the timer raises.
        self.timeout = 0.0
        self.in_call = False

    @property
    def worker_id(self) -> str:
        return self._worker.worker_id

    @property
    def pid(self) -> int | None:
        return self._worker.pid

    @property
    def session(self) -> str | None:
        return self._waiter.session

    @property
    def slot(self) -> int:
        assert self._waiter.slot is not None
        return self._waiter.slot

    async def call(self, command: str, args: Any = None, *,
                   timeout: float | None = None) -> Any:
        """Send one command to this worker and return its result.

        Raises RemoteError (the handler failed; the worker is fine), WorkerCrashed,
        CallTimeout or ProtocolError (the worker is replaced), PoolClosed when the
        pool shut down under this lease, LeaseReleased after the block ended.
        """
        if self.released:
            if self.forced:
                raise PoolClosed(pool=self._pool.name)
            raise LeaseReleased(worker_id=self._worker.worker_id)
        if self.in_call:
            # Refused before touching the deadline fields: they belong to the
            # call in flight, which the pool's timer must keep watching.
            raise trio.BusyResourceError(
                f"lease on worker {self._worker.worker_id} already has a call in flight; "
                "a lease serves one call at a time")
        if timeout is None:
            timeout = self._pool.config.call_timeout
        pool = self._pool
        started = pool.now()
        entry = None
        if timeout is not None:
            # No cancel scope per call: the pool's timer ends an overdue call
            # with worker.time_out(), which raises CallTimeout in it.
            self.timeout = timeout
            entry = pool.timer.deadlines.add(started + timeout, self)
        outcome = "ok"
        self.in_call = True
        try:
            return await self._worker.call(command, args, session=self.session)
        except BaseException as exc:
            outcome = type(exc).__name__
            if isinstance(exc, WorkerCrashed | CallTimeout | ProtocolError):
                self.error = exc
                if self.forced:
                    # Shutdown killed this worker after shutdown_grace.
                    raise PoolClosed(pool=self._pool.name) from exc
            raise
        finally:
            self.in_call = False
            if entry is not None:
                Deadlines.remove(entry)
            self.calls += 1
            self._pool.observe_call(command, self._pool.now() - started, outcome,
                                    self._worker.worker_id)

    def deadline_passed(self) -> None:
        # The timer: this call's deadline passed (it ends with CallTimeout).
        self._worker.time_out(self.timeout)

    def _force_close(self) -> None:
        # Killing the worker wakes a call in flight at once (as a crash would);
        # ``forced`` turns that into PoolClosed for the caller.
        self.forced = True
        self._worker.kill()


class Pool:
    """A supervised pool of worker processes. Create it with :func:`open_pool`."""

    kind = "pool"

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.name = config.name
        self.label = config.name or f"pool{next(_pool_ids)}"
        self._nursery = nursery
        self.factory: WorkerFactory = config.worker_factory or _default_factory
        self.policy = config.policy if config.policy is not None else DefaultPolicy()
        # The default policy's checkin rule (dirty -> Remove) is applied by the core
        # itself, so it needs no call at all on the hot path.
        self._default_policy = type(self.policy) is DefaultPolicy
        self.rng = random.Random(config.seed)
        # The run's clock, bound once: trio.current_time() walks three layers,
        # and a checkout reads the time about seven times. (MockClock included.)
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.core = PoolCore(
            config.size, clock=self.now, affinity=config.affinity,
            max_waiters=config.max_waiters, lazy=config.lazy,
            max_calls_per_worker=config.max_calls_per_worker,
            max_health_failures=config.max_health_failures, vet=self._vet, name=self.label,
            telemetry_enabled=telemetry.active,
        )
        self.workers: list[WorkerHandle | None] = [None] * config.size
        self.slots = [SlotSupervisor(self, i, random.Random(self.rng.random()))
                      for i in range(config.size)]
        self.breaker = CircuitBreaker(
            failure_threshold=config.effective_breaker_threshold, window=config.breaker_window,
            reset_timeout=config.breaker_reset, clock=self.now,
        )
        self.breaker.on_transition.append(self._breaker_moved)
        # Queued checkouts park their task here until the core grants (or
        # fails) them: a Wake action reschedules it. No Event, no cancel scope.
        self._parked: dict[int, trio.lowlevel.Task] = {}
        # One timer task serves every deadline (queued checkouts, calls in
        # flight, health probes).
        self.timer = PoolTimer(self.now, self.flush)
        self._leases: dict[int, Lease] = {}
        self.live = trio_util.AsyncValue(0)
        # Set when the last lease returns while aclose() waits for leases.
        self._leases_drained: trio.Event | None = None
        self.stopped = trio_util.AsyncValue(config.size)
        self._live_count = 0
        self._stopped_count = config.size
        self.closed_event = trio.Event()
        self.closing = False
        self._closed_done = trio.Event()
        self.crashes = 0
        self.start_failures = 0
        self.last_start_error: WorkerStartError | None = None
        self.failing_slots: set[int] = set()  # slots whose last start failed
        self.handle_defect_reported = False
        self.metrics_store = telemetry.Metrics(histograms=("checkout_wait", "call"))
        self._call_latency = self.metrics_store.histogram("call")
        self._checkout_latency = self.metrics_store.histogram("checkout_wait")

    # --- public API ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.closing

    async def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Wait until at least ``n`` workers (default: size) have started and are alive."""
        want = self.config.size if n is None else n
        if not 0 <= want <= self.config.size:
            raise ValueError(f"wait_ready(n={want}) must be between 0 and size={self.config.size}")
        limit = self.config.start_timeout * 2 if timeout is None else timeout
        with trio.move_on_after(limit):
            await self.live.wait_value(lambda v: v >= want or self.closing)
            if self.closing:
                raise PoolClosed(pool=self.label)
            return
        why = f"only {self.live.value} of {want} workers ready"
        if self.last_start_error is not None:
            why += f"; last start failure: {self.last_start_error.reason}"
        raise PoolTimeout(timeout=limit, pool=self.label, reason=why)

    @asynccontextmanager
    async def checkout(self, session: str | None = None,
                       timeout: float | None = None) -> AsyncIterator[Lease]:
        """Check a worker out (for ``session``, routed to its bound worker)."""
        lease = await self._acquire(session, timeout)
        try:
            yield lease
        except BaseException as exc:
            self._release(lease, exc)
            raise
        self._release(lease, None)

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None, checkout_timeout: float | None = None,
                   retry: Retry | None = None) -> Any:
        """Check out a worker, send one command, check it back in."""
        if retry is not None:
            async def once(attempt: int) -> Any:
                return await self.call(command, args, session=session, timeout=timeout,
                                       checkout_timeout=checkout_timeout)

            return await retry.run(once, rng=self.rng)
        # checkout() + lease.call() without the generator-based context manager,
        # and without the checkout's own checkpoint: the call checkpoints anyway.
        # The usual case (breaker closed) skips a coroutine layer too.
        decision = self.breaker.allow()
        if decision.allowed and not decision.probe:
            lease = await self._acquire_lease(session, checkout_timeout, False)
        else:
            lease = await self._acquire(session, checkout_timeout, checkpoint=False,
                                        decision=decision)
        try:
            result = await lease.call(command, args, timeout=timeout)
        except BaseException as exc:
            self._release(lease, exc)
            raise
        self._release(lease, None)
        return result

    async def end_session(self, session: str) -> bool:
        """Drop a session: its worker is sent ``cleanup_session`` and it is unbound.

        Returns True if live state was cleaned up, False if there was none.
        """
        binding = self.core.bindings.get(session)
        if binding is None or binding.lost is not None:
            self.core.unbind(session)
            await trio.lowlevel.checkpoint()
            return False
        try:
            async with self.checkout(session=session) as lease:
                await lease.call("cleanup_session", {"session": session})
        finally:
            self.core.unbind(session)
        telemetry.emit(telemetry.SESSION_END, {}, {"pool": self.label, "session": session})
        return True

    def statistics(self) -> PoolStatistics:
        c = self.core.counts()
        return PoolStatistics(
            name=self.name, size=c.size, ready=c.ready, busy=c.busy, starting=c.starting,
            degraded=c.degraded, stopping=c.stopping, stopped=c.stopped, waiting=c.waiting,
            sessions=c.sessions, restarts=c.restarts, crashes=self.crashes,
            start_failures=self.start_failures, leases=len(self._leases),
            breaker=self.breaker.state.value, closed=self.closing,
        )

    def workers_snapshot(self) -> tuple[WorkerSnapshot, ...]:
        return tuple(
            WorkerSnapshot(slot=s.index, worker_id=s.worker_id, pid=s.pid,
                           state=s.state.value, calls=s.calls,
                           sessions=tuple(sorted(s.sessions)),
                           history=tuple(s.lifecycle.history))
            for s in self.core.slots
        )

    def metrics(self) -> telemetry.MetricsSnapshot:
        return self.metrics_store.snapshot()

    def worker_pids(self) -> list[int]:
        """OS pids of the live worker processes (for tests and chaos)."""
        pids = []
        for worker in self.workers:
            if worker is not None:
                pid = getattr(worker, "os_pid", worker.pid)
                if pid is not None:
                    pids.append(pid)
        return pids

    async def aclose(self) -> None:
        """Stop new checkouts, let leases finish for ``shutdown_grace``, then stop
        every worker and wait for every process. Idempotent."""
        if self.closing:
            await self._closed_done.wait()
            return
        self.closing = True
        self.closed_event.set()
        telemetry.emit(telemetry.POOL_STOP, {}, {"pool": self.label})
        self.core.close()
        self.flush()
        with trio.move_on_after(self.config.shutdown_grace):
            if self._leases:
                self._leases_drained = trio.Event()
                await self._leases_drained.wait()
        for lease in list(self._leases.values()):
            # Tell the slot first, so the kill is recorded as a stop, not a crash.
            self.slots[lease.slot].killed_by_pool = True
            lease._force_close()
        for slot in self.core.slots:
            self.core.retire(slot.index, "pool closing", graceful=False)
            if slot.state is WorkerState.BUSY:
                self.slots[slot.index].request_stop("pool closing: lease cancelled",
                                                    graceful=False)
        self.flush()
        await self.stopped.wait_value(lambda v: v >= self.config.size)
        self._nursery.cancel_scope.cancel()
        self._closed_done.set()

    # --- internals: checkout -----------------------------------------------------

    async def _acquire(self, session: str | None, timeout: float | None, *,
                       checkpoint: bool = True, decision: Decision | None = None) -> Lease:
        if decision is None:
            decision = self.breaker.allow()
        if not decision.allowed and not self.closing:
            await trio.lowlevel.checkpoint()
            raise PoolUnavailable(reason=decision.reason, retry_in=decision.retry_in,
                                  pool=self.label)
        if not decision.probe:
            return await self._acquire_lease(session, timeout, checkpoint)
        # Half-open: this checkout is the probe that decides whether to close.
        try:
            lease = await self._acquire_lease(session, timeout, checkpoint)
        except trio.Cancelled:
            self.breaker.probe_abandoned(decision.generation)
            raise
        except BaseException:
            self.breaker.probe_finished(False, decision.generation)
            raise
        self.breaker.probe_finished(True, decision.generation)
        return lease

    async def _acquire_lease(self, session: str | None, timeout: float | None,
                             checkpoint: bool) -> Lease:
        started = self.now()
        waiter = self.core.request(
            session, self.config.checkout_timeout if timeout is None else timeout,
            now=started)
        self.flush()
        if waiter.status is WaiterStatus.FAILED or (
                checkpoint and waiter.status is WaiterStatus.GRANTED):
            # Served (or refused) at once: still a checkpoint, as every Trio
            # blocking call is. pool.call skips it: its call checkpoints anyway.
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self.core.cancel(waiter.id)
                self.flush()
                raise
        yielded = checkpoint
        while True:
            if waiter.status is WaiterStatus.QUEUED:
                await self._wait(waiter)
                yielded = True
            if waiter.status is WaiterStatus.FAILED:
                self.core.cancel(waiter.id)
                assert waiter.error is not None
                raise waiter.error
            assert waiter.slot is not None
            worker = self.workers[waiter.slot]
            # The hand-off check ran when the worker was granted; if this task
            # slept since, the worker may have died in between: check again.
            if worker is not None and not worker.dirty and (
                    worker.is_alive() if yielded else worker.exit_info is None):
                break
            self.core.reject_grant(waiter.id, "process_dead at receipt")
            self.flush()
        if not self.core.receive(waiter.id):  # pragma: no cover - defensive
            raise PoolClosed(pool=self.label)
        lease = Lease(self, waiter, worker)
        self._leases[waiter.id] = lease
        # Served without sleeping: no wait worth a clock read.
        wait = self.now() - started if yielded else 0.0
        self._checkout_latency.record(wait)
        if telemetry.active():
            telemetry.emit(telemetry.CHECKOUT, {"wait": wait},
                           {"pool": self.label, "worker_id": worker.worker_id,
                            "session": session})
        return lease

    async def _wait(self, waiter: Waiter) -> None:
        # A grant can be taken back before we run (the worker died between grant
        # and receipt: the core re-queues us), so wait until served for good.
        waiter_id = waiter.id

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.pop(waiter_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        entry = None
        if waiter.deadline is not None:
            entry = self.timer.deadlines.add(waiter.deadline,
                                             _CheckoutDeadline(self.core, waiter_id))
        try:
            while waiter.status is WaiterStatus.QUEUED:
                self._parked[waiter_id] = trio.lowlevel.current_task()
                try:
                    await trio.lowlevel.wait_task_rescheduled(abort)
                except BaseException:
                    # Cancelled while queued (a grant reschedules the task, so it
                    # can't be cancelled after one): the core forgets the waiter.
                    self.core.cancel(waiter_id)
                    self.flush()
                    raise
        finally:
            if entry is not None:
                Deadlines.remove(entry)

    def _release(self, lease: Lease, error: BaseException | None) -> None:
        if lease.released:
            return
        lease.released = True
        self._leases.pop(lease._waiter.id, None)
        if not self._leases and self._leases_drained is not None:
            self._leases_drained.set()
        worker = lease._worker
        # No poll here: a death is reported by the exit watcher (exit_info) or
        # the channel (dirty), and the next hand-off polls anyway.
        clean = lease.error is None and not worker.dirty and worker.exit_info is None
        remove: str | None = None
        if not self._default_policy:
            info = self._info(self.core.slots[lease.slot], worker)
            verdict = vet_checkin(self.policy, info, CheckinOutcome(clean, error, lease.calls))
            if verdict.violation is not None:
                self._report_violation(verdict, lease.slot)
            if isinstance(verdict.decision, Remove):
                remove = verdict.decision.reason
        self.core.checkin(lease._waiter.id, clean=clean, remove=remove, calls=lease.calls)
        self.flush()
        if telemetry.active():
            telemetry.emit(telemetry.CHECKIN, {}, {"pool": self.label, "worker_id":
                                                       worker.worker_id, "clean": clean})

    def _vet(self, slot: Slot, waiter: Waiter) -> Verdict:
        """Safe hand-off: is this worker fit to be handed over right now?"""
        worker = self.workers[slot.index]
        fault = _FAULTS.get("before_handoff")
        if fault is not None and worker is not None:
            fault(self, slot.index, worker)
        if worker is None:
            return Verdict(Remove("not_ready: no worker"))
        if not worker.is_alive():
            return Verdict(Remove("process_dead"))
        if worker.dirty:
            return Verdict(Remove("pipe_closed"))
        if slot.state is not WorkerState.READY:
            return Verdict(Remove("not_ready"))
        if self._default_policy:
            return _OK_VERDICT  # nothing to ask: skip building the policy's view
        request = CheckoutRequest(waiter.session, trio.current_time() - waiter.enqueued_at)
        verdict = vet_checkout(self.policy, self._info(slot, worker), request)
        if verdict.violation is not None:
            # Count it only: the core emits the telemetry event for every
            # checkout verdict it is handed (emitting here too sent it twice).
            self.metrics_store.increment("contract_violations")
        return verdict

    def _info(self, slot: Slot, worker: WorkerHandle) -> WorkerInfo:
        return WorkerInfo(worker_id=worker.worker_id, pid=worker.pid, slot=slot.index,
                          calls=slot.calls, sessions=len(slot.sessions),
                          age=trio.current_time() - slot.ready_at)

    def _report_violation(self, verdict: Verdict, slot: int) -> None:
        assert verdict.violation is not None
        self.metrics_store.increment("contract_violations")
        telemetry.emit(telemetry.CONTRACT_VIOLATION, {},
                       {"pool": self.label, "slot": slot,
                        "callback": verdict.violation.callback,
                        "value": repr(verdict.violation.value)})

    # --- internals: actions ------------------------------------------------------

    def flush(self) -> None:
        """Perform the actions the core asked for."""
        core = self.core
        for action in core.take_actions() if core.has_actions() else ():
            if isinstance(action, Wake):
                task = self._parked.pop(action.waiter, None)
                if task is not None:
                    trio.lowlevel.reschedule(task)
            elif isinstance(action, StartWorker):
                self.slots[action.slot].request_start()
            elif isinstance(action, StopWorker):
                self.slots[action.slot].request_stop(action.reason, action.graceful)
            elif isinstance(action, Emit):
                telemetry.emit(action.event, action.measurements,
                               {"pool": self.label, **action.metadata})
        counts = self.core.state_counts
        live = counts[WorkerState.READY] + counts[WorkerState.BUSY] \
            + counts[WorkerState.DEGRADED]
        stopped = counts[WorkerState.STOPPED]
        # AsyncValue wakes its waiters on every assignment; assign only changes
        # (compared against plain ints: its property getter is not free).
        if self._live_count != live:
            self._live_count = self.live.value = live
        if self._stopped_count != stopped:
            self._stopped_count = self.stopped.value = stopped

    def observe_call(self, command: str, duration: float, outcome: str,
                     worker_id: str) -> None:
        self._call_latency.record(duration)
        counter = _OUTCOME_COUNTERS.get(outcome)
        if counter is None:
            counter = _OUTCOME_COUNTERS[outcome] = f"calls_{outcome}"
        self.metrics_store.increment(counter)
        if telemetry.active():
            telemetry.emit(telemetry.CALL, {"duration": duration},
                           {"pool": self.label, "command": command, "outcome": outcome,
                            "worker_id": worker_id})

    # --- internals: supervision hooks ---------------------------------------------

    def record_crash(self, index: int, worker: WorkerHandle, reason: str) -> None:
        self.crashes += 1
        self.metrics_store.increment("worker_crashes")
        logger.warning("worker %s (pid %s) %s", worker.worker_id, worker.pid, reason)

    def record_start_failure(self, index: int, exc: WorkerStartError) -> None:
        self.start_failures += 1
        self.last_start_error = exc
        self.metrics_store.increment("worker_start_failures")
        # The breaker is pool-wide: it opens when *most* slots fail to start. One
        # slot that keeps failing is paced by its own backoff and must not shut
        # out the callers that the healthy slots are serving.
        self.failing_slots.add(index)
        if 2 * len(self.failing_slots) > self.config.size:
            self.breaker.record_failure("start_failure", exc.reason)
        # A crash-looping slot would flood the log: report the 1st, 2nd, 4th,
        # 8th... consecutive failure of a slot.
        failures = self.slots[index].start_failures
        if failures & (failures - 1) == 0:
            logger.warning("%s (%d consecutive start failures on slot %d)", exc, failures, index)

    def breaker_success(self) -> None:
        # Called by a slot task once its worker is ready (in self.workers).
        self.failing_slots = {i for i in self.failing_slots if self.workers[i] is None}
        self.breaker.record_success()

    def _breaker_moved(self, old: Any, new: Any, reason: str) -> None:
        old, new = getattr(old, "value", old), getattr(new, "value", new)
        logger.warning("circuit breaker %s -> %s: %s", old, new, reason)
        telemetry.emit(telemetry.BREAKER_TRANSITION, {},
                       {"pool": self.label, "old": old, "new": new, "reason": reason})
        if new == "open" and not self.closing:
            self._nursery.start_soon(self._breaker_timer)

    async def _breaker_timer(self) -> None:
        # The breaker moves to half-open lazily, when someone looks; look on time
        # so the transition (and its event) happens even with no checkouts.
        await trio.sleep(self.config.breaker_reset)
        _ = self.breaker.state

    # --- internals: background ---------------------------------------------------

    def start(self) -> None:
        for supervisor in self.slots:
            self._nursery.start_soon(supervisor.run)
        self._nursery.start_soon(self.timer.run)
        if self.config.health_interval is not None:
            self._nursery.start_soon(self._health_loop)
        if self.config.session_ttl is not None:
            self._nursery.start_soon(self._session_ttl_loop)
        if self.config.idle_retire is not None:
            self._nursery.start_soon(self._idle_retire_loop)
        telemetry.emit(telemetry.POOL_START, {"size": self.config.size},
                       {"pool": self.label, "app": self.config.app})
        self.core.start()
        self.flush()

    async def _health_loop(self) -> None:
        from engine.pool.health import run_health_checks

        await run_health_checks(self)

    async def _session_ttl_loop(self) -> None:
        from engine.pool.health import run_session_expiry

        await run_session_expiry(self)

    async def _idle_retire_loop(self) -> None:
        from engine.pool.health import run_idle_retirement

        await run_idle_retirement(self)


@attrs.define(slots=True)
class _CheckoutDeadline:
    """A queued checkout's deadline: the core fails it with PoolTimeout."""

    core: PoolCore
    waiter_id: int

    def deadline_passed(self) -> None:
        self.core.expire(self.waiter_id)


_FAULTS: dict[str, Any] = {}


def set_fault(point: str, hook: Any) -> None:
    """Test kit seam: run ``hook(pool, slot, worker)`` at a named hand-off point."""
    if point not in ("before_handoff",):
        raise ValueError(f"unknown fault point {point!r}; known: before_handoff")
    if hook is None:
        _FAULTS.pop(point, None)
    else:
        _FAULTS[point] = hook


@asynccontextmanager
async def open_pool(config: PoolConfig | None = None, **overrides: Any) -> AsyncIterator[Pool]:
    """Start a pool; leaving the block closes it and waits for every worker process.

    ``open_pool(config=None, **overrides)``: any PoolConfig field may be given as a
    keyword. Invalid values raise ValueError naming the field.
    """
    cfg = make_config(config, overrides)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pool = Pool(cfg, nursery)
            pool.start()
            registration: Any = nullcontext()
            if cfg.name is not None:
                from engine.discovery import register

                registration = register(cfg.name, pool)
            try:
                with registration:
                    yield pool
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
    except BaseExceptionGroup as group:
        # Background tasks raise only for a worker handle that lacks a
        # required method (a programming error, raised once), so a group
        # holding just that or the body's own exception is unwrapped: users
        # see what they (or their worker_factory) got wrong, not a group.
        if len(group.exceptions) == 1:
            sole: BaseException = group.exceptions[0]
            if sole is body_error or isinstance(sole, IncompleteWorkerHandle):
                raise sole from None
        raise


__all__ = ["EngineError", "Lease", "Pool", "PoolStatistics", "open_pool", "set_fault"]
