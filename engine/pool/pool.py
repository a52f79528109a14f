"""open_pool and Pool: the Trio shell around the sans-IO core.

The shell turns core actions into I/O: it wakes waiters, asks slot tasks to
start or stop workers, and emits telemetry. Checkout bookkeeping never awaits
anything but the waiter's own wake-up, so a checkout can't be blocked by a
slow kill or spawn, and every race of the hand-off is decided inside the core.

Who does what (each sees the pool only through a small interface object):

* :mod:`~engine.pool.core`: the sans-IO bookkeeping (slots, waiters, sessions);
* :mod:`~engine.pool.table`: the shell's worker table (handle + supervisor per slot);
* :mod:`~engine.pool.supervisor`: one task per slot (``SupervisorContext``);
* :mod:`~engine.pool.health`: health checks, session expiry, idle retirement
  (``HealthContext``);
* :mod:`~engine.pool.timer`: every deadline, on one heap and one task (the
  clock and a flush);
* :mod:`~engine.pool.lease`: a checked-out worker and its check-in (``LeaseContext``);
* :mod:`~engine.pool.failures`: start failures, crashes and the circuit breaker;
* :mod:`~engine.pool.introspection`: statistics and snapshots.

Introspection (for the test kit, the stress runner and debugging; not needed
to use a pool):

* ``pool.inspect()`` -> :class:`~engine.pool.introspection.PoolView`, a frozen
  snapshot: ``slots`` (index, state, generation, worker id, pid, lease token,
  sessions, calls, wanted, transition history, and the live worker handle for
  liveness checks), ``bindings`` (session -> slot, generation, worker id,
  ``lost``), ``queue`` (queued checkouts in order), ``closing`` and
  ``last_start_error``;
* ``await pool.wait_until(condition)``: wait until ``condition(pool.inspect())``
  holds, re-checked whenever the number of live workers changes and when the
  pool starts closing; returns that view;
* ``pool.check_invariants()``: raise ``AssertionError`` if the core's
  bookkeeping is inconsistent or the shell's tables disagree with it;
* ``pool.worker_pids()``: OS pids of the worker processes present.
"""

from __future__ import annotations

import itertools
import logging
import operator
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from functools import partial
from typing import Any, TypeVar

import trio
import trio_util

from engine import telemetry
from engine.errors import (
    EngineError,
    PickleNotAllowed,
    PoolClosed,
    PoolTimeout,
    PoolUnavailable,
    SessionLost,
    start_cause,
)
from engine.pool.config import PoolConfig, check_seconds, make_config
from engine.pool.contract import (
    CheckinOutcome,
    CheckoutRequest,
    DefaultPolicy,
    Ok,
    Remove,
    Skip,
    Verdict,
    WorkerInfo,
    vet_checkin,
    vet_checkout,
)
from engine.pool.core import (
    DrainWorker,
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
from engine.pool.draining import DrainContext, drain_worker
from engine.pool.failures import FailureTracker
from engine.pool.health import (
    HealthContext,
    run_health_checks,
    run_idle_retirement,
    run_session_expiry,
)
from engine.pool.introspection import (
    PoolStatistics,
    PoolView,
    check_shell_invariants,
    view_of,
)
from engine.pool.lease import (
    CheckoutBlock,
    HeldLeases,
    Lease,
    LeaseContext,
    release,
    revoke,
)
from engine.pool.lifecycle import WorkerState
from engine.pool.pickled import pickle_call, unpickle_reply
from engine.pool.resilience import CircuitBreaker, Decision, Retry
from engine.pool.supervisor import IncompleteWorkerHandle, SlotSupervisor, SupervisorContext
from engine.pool.table import WorkerTable
from engine.pool.timer import PoolTimer
from engine.process.handle import WorkerHandle
from engine.protocol import PICKLE_CODEC, PICKLE_COMMAND
from engine.workers.pickled import adopting_parent_main

logger = logging.getLogger("engine.pool")
_pool_ids = itertools.count(1)
_OK_VERDICT = Verdict(Ok())
_OUTCOME_COUNTERS: dict[str, str] = {}
T = TypeVar("T")


def _default_factory(request: Any) -> Any:
    from engine.process.spawn import open_process_worker

    return open_process_worker(request)


class Pool:
    """A supervised pool of worker processes. Create it with :func:`open_pool`."""

    kind = "pool"

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.name = config.name
        #: The name in telemetry, logs and errors (``name``, or ``pool<n>``).
        self.label = config.name or f"pool{next(_pool_ids)}"
        self._nursery = nursery  # open_pool's (the shutdown runs there)
        self._tasks: trio.Nursery | None = None  # the background tasks' own
        self._policy = config.policy if config.policy is not None else DefaultPolicy()
        # The default policy's checkin rule (dirty -> Remove) is applied by the core
        # itself, so it needs no call at all on the hot path.
        self._default_policy = type(self._policy) is DefaultPolicy
        self._rng = random.Random(config.seed)
        # The run's clock, bound once: trio.current_time() walks three layers,
        # and a checkout reads the time about seven times. (MockClock included.)
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        # The run that owns the pool: its tasks, events and clock are that
        # run's, so a call from another run must be refused before it touches
        # them (see _check_run).
        self._run_token = trio.lowlevel.current_trio_token()
        self._core = PoolCore(
            config.size, clock=self._now, affinity=config.affinity,
            max_waiters=config.max_waiters, lazy=config.lazy,
            max_calls_per_worker=config.max_calls_per_worker,
            max_health_failures=config.max_health_failures, vet=self._vet, name=self.label,
            telemetry_enabled=telemetry.active,
        )
        self._metrics = telemetry.Metrics(histograms=("checkout_wait", "call"))
        self._call_latency = self._metrics.histogram("call")
        self._checkout_latency = self._metrics.histogram("checkout_wait")
        self._breaker = CircuitBreaker(
            failure_threshold=config.effective_breaker_threshold, window=config.breaker_window,
            reset_timeout=config.breaker_reset, clock=self._now,
        )
        self._breaker.on_transition.append(self._breaker_moved)
        self._failures = FailureTracker(
            config.size, self._breaker, self._metrics, slots=self._core.slots,
            app=config.app, pool=self.label, on_unstartable=self._fail_unstartable)
        self._closing = trio.Event()  # aclose() began: no new checkout, no new start
        self._closed = trio.Event()  # every worker is stopped and waited for
        # One timer task serves every deadline (queued checkouts, calls in
        # flight, health probes).
        self._timer = PoolTimer(self._now, self._flush)
        self._held = HeldLeases()
        # Queued checkouts park their task here until the core grants (or
        # fails) them: a Wake action reschedules it. No Event, no cancel scope.
        self._parked: dict[int, trio.lowlevel.Task] = {}
        self._live = trio_util.AsyncValue(0)  # workers ready, busy or degraded
        self._stopped = trio_util.AsyncValue(config.size)
        self._live_count = 0
        # Counts every change of _live: wait_until waits for the count to move
        # past what it saw, so a change (even 1 -> 0 -> 1) made before its
        # waiting task is registered is not missed.
        self._live_changes = trio_util.AsyncValue(0)
        self._stopped_count = config.size
        supervision = SupervisorContext(
            config=config, label=self.label, core=self._core, flush=self._flush,
            closing=self._closing, factory=config.worker_factory or _default_factory,
            events=self._failures, clock=self._now)
        self._table = WorkerTable(config.size, lambda row: SlotSupervisor(
            supervision, row, random.Random(self._rng.random())))
        self._rows = self._table.rows
        self._drain_context = DrainContext(
            label=self.label, core=self._core, flush=self._flush, table=self._table,
            clock=self._now, metrics=self._metrics)
        self._lease_context = LeaseContext(
            label=self.label, call_timeout=config.call_timeout,
            cancel_grace=config.cancel_grace, clock=self._now,
            core=self._core, flush=self._flush, deadlines=self._timer.deadlines,
            held=self._held, record_call=self._record_call,
            vet_checkin=None if self._default_policy else self._vet_checkin)

    # --- public API ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` began (new checkouts get PoolClosed)."""
        return self._closing.is_set()

    async def wait_ready(self, n: int | None = None, timeout: float | None = None) -> None:
        """Wait until at least ``n`` workers (default: size) have started and are alive."""
        self._check_run()
        want = self.config.size if n is None else n
        if not 0 <= want <= self.config.size:
            raise ValueError(f"wait_ready(n={want}) must be between 0 and size={self.config.size}")
        limit = self.config.start_timeout * 2 if timeout is None else timeout
        failures = self._failures
        with trio.move_on_after(limit):
            while True:
                if self._closing.is_set():
                    raise PoolClosed(pool=self.label)
                if self._live.value >= want and self._alive_count() >= want:
                    await trio.lowlevel.checkpoint()
                    return
                unstartable = failures.unstartable()
                if unstartable is not None:
                    await trio.lowlevel.checkpoint()
                    raise unstartable
                # Wait for a change since the check above: wait_any starts its
                # waits in child tasks, so a transition in between would be
                # missed by wait_transition (a lost wake-up under load). Counters,
                # not values: a value compare misses a 2 -> 1 -> 2.
                changes, outcomes = self._live_changes.value, failures.outcomes.value
                await trio_util.wait_any(
                    partial(self._live_changes.wait_value, partial(operator.ne, changes)),
                    self._closing.wait,
                    partial(failures.outcomes.wait_value, partial(operator.ne, outcomes)))
        raise self._explained(PoolTimeout(
            timeout=limit, pool=self.label,
            reason=f"only {self._alive_count()} of {want} workers ready"))

    def _alive_count(self) -> int:
        """Live workers whose process is alive now: one killed a moment ago
        still counts in the core until its slot task notices the death, and
        ``wait_ready`` must not count it (its slot then moves, waking us)."""
        live = (WorkerState.READY, WorkerState.BUSY, WorkerState.DEGRADED)
        return sum(1 for slot in self._core.slots if slot.state in live
                   and (worker := self._rows[slot.index].worker) is not None
                   and worker.is_alive())

    def checkout(self, session: str | None = None,
                 timeout: float | None = None) -> CheckoutBlock:
        """Check a worker out (for ``session``, routed to its bound worker):
        ``async with pool.checkout() as lease:``; the block's end checks it in."""
        if timeout is not None:
            check_seconds("timeout", timeout, "checkout_timeout")
        return CheckoutBlock(self._acquire, session, timeout)

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None, checkout_timeout: float | None = None,
                   retry: Retry | None = None) -> Any:
        """Check out a worker, send one command, check it back in."""
        if retry is not None:
            async def once(attempt: int) -> Any:
                return await self.call(command, args, session=session, timeout=timeout,
                                       checkout_timeout=checkout_timeout)

            return await retry.run(once, rng=self._rng)
        # checkout() + lease.call() without the generator-based context manager,
        # and without the checkout's own checkpoint: the call checkpoints anyway.
        # The usual case (breaker closed) skips a coroutine layer too.
        # Bad timeouts are refused before a worker is reserved (or a session bound).
        if timeout is not None:
            check_seconds("timeout", timeout, "call_timeout")
        if checkout_timeout is not None:
            check_seconds("checkout_timeout", checkout_timeout, "checkout_timeout")
        decision = self._breaker.allow()
        if decision.allowed and not decision.probe:
            lease = await self._acquire_lease(session, checkout_timeout, False)
        else:
            lease = await self._acquire(session, checkout_timeout, checkpoint=False,
                                        decision=decision)
        try:
            result = await lease.call(command, args, timeout=timeout)
        except BaseException as exc:
            release(lease, exc)
            raise
        release(lease, None)
        return result

    async def run_sync(self, fn: Callable[..., T], *args: Any, session: str | None = None,
                       timeout: float | None = None, kill_on_cancel: bool = False) -> T:
        """Run ``fn(*args)`` in a worker and return its value (``engine.run_sync``
        on this pool). ``fn`` and ``args`` go by pickle (protocol 5), so ``fn``
        must be importable by the worker (a module-level function, or a
        ``functools.partial`` of one); the value comes back by pickle too.

        * What cannot be pickled raises ``ArgumentTypeError`` (a ``TypeError``)
          before a worker is reserved.
        * ``fn``'s exception is raised here as itself, with the worker's
          traceback as its ``__cause__``.
        * ``session``: run on the worker holding that session; ``fn`` reaches
          its state with ``engine.workers.current_session()`` (a dict kept
          between calls).
        * ``timeout`` (default: the pool's ``call_timeout``): past it, the
          call raises ``CallTimeout``; the worker is asked to abandon ``fn``
          (it is interrupted) and killed if it does not within ``cancel_grace``.
        * ``kill_on_cancel=False``: once ``fn`` runs, cancellation waits for
          it (like ``trio.to_thread.run_sync``); waiting for a worker can be
          cancelled. ``True``: cancellation kills the worker at once (the pool
          replaces it; its sessions are lost) and raises ``Cancelled``.

        Raises ``PickleNotAllowed`` when the worker takes JSON only (a remote
        worker without ``allow_pickle=True``), and what ``call`` raises.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing reserved
        if timeout is not None:
            check_seconds("timeout", timeout, "call_timeout")
        call = pickle_call(fn, args)
        lease = await self._acquire(session, None, checkpoint=False)
        try:
            if PICKLE_CODEC not in lease.codecs:
                raise PickleNotAllowed(worker_id=lease.worker_id, pool=self.label)
            # Not kill_on_cancel: once sent, the call completes even if this
            # task is cancelled (the channel shields it only then).
            call.finish_on_cancel = not kill_on_cancel
            reply = await lease.call(PICKLE_COMMAND, call, timeout=timeout)
        except BaseException as exc:
            release(lease, exc, kill=kill_on_cancel and isinstance(exc, trio.Cancelled))
            raise
        release(lease, None)
        result: T = unpickle_reply(reply, lease.worker_id)
        return result

    async def end_session(self, session: str) -> bool:
        """Drop a session: its worker is sent ``cleanup_session`` and it is unbound.

        Returns True if live state was cleaned up, False if there was none.
        """
        core = self._core
        binding = core.bindings.get(session)
        if binding is None or binding.lost is not None:
            core.unbind(session)
            await trio.lowlevel.checkpoint()
            return False
        try:
            async with self.checkout(session=session) as lease:
                await lease.call("cleanup_session", {"session": session})
        except SessionLost:
            # Its worker died before the pool noticed (found at hand-off or by
            # the cleanup call itself): the state the caller wanted gone is gone.
            return False
        finally:
            core.unbind(session)
        telemetry.emit(telemetry.SESSION_END, {}, {"pool": self.label, "session": session})
        return True

    def statistics(self) -> PoolStatistics:
        return PoolStatistics.from_counts(
            self._core.counts(), name=self.name, label=self.label, leases=len(self._held),
            breaker=self._breaker.state.value, closed=self.closed,
            workers=(row.worker for row in self._table))

    def metrics(self) -> telemetry.MetricsSnapshot:
        return self._metrics.snapshot()

    def expect_death(self, worker_id: str) -> None:
        """Say that the caller is about to kill (or crash) ``worker_id`` on
        purpose: a chaos runner, a campaign, a test.

        Its death is handled as any crash (replacement, telemetry,
        ``worker_crashes``), but it is counted in the ``expected_deaths``
        metric and logged at DEBUG instead of one WARNING line per death,
        so that hundreds of planned kills do not bury an unexpected crash.
        """
        self._failures.expect_death(worker_id)

    def worker_pids(self) -> list[int]:
        """OS pids of the live worker processes (for tests and chaos): the
        processes this pool spawned, so for a remote worker its local launcher
        (ssh), never the remote pid."""
        return self._table.os_pids()

    def inspect(self) -> PoolView:
        """A frozen snapshot of every slot, binding and queued checkout (see the
        module docstring)."""
        return view_of(self.label, self._core, self._table, self._failures.last_start_error)

    def check_invariants(self) -> None:
        """Raise AssertionError if the pool's bookkeeping is inconsistent."""
        self._core.check_invariants()
        check_shell_invariants(self._core, self._table, self._held.by_token, self._parked)

    async def wait_until(self, condition: Callable[[PoolView], bool]) -> PoolView:
        """Wait until ``condition(pool.inspect())`` holds and return that view.

        Re-checked whenever the number of live workers (ready, busy or
        degraded: a worker that starts or stops draining counts as a change)
        changes and when the pool starts closing. No time limit of its own:
        wrap it in one.
        """
        self._check_run()
        while True:
            seen = self._live_changes.value
            view = self.inspect()
            if condition(view):
                return view
            # A change since this view, counted (not the next transition, nor
            # a value that differs from the view's): wait_any starts its waits
            # in child tasks, and 2 -> 1 -> 2 in between would be lost.
            changed = partial(self._live_changes.wait_value, partial(operator.ne, seen))
            if self._closing.is_set():
                await changed()
            else:
                await trio_util.wait_any(changed, self._closing.wait)

    async def aclose(self) -> None:
        """Stop new checkouts, let leases finish for ``shutdown_grace``, then stop
        every worker and wait for every process.

        Idempotent, and safe to cancel at any point: the shutdown runs in the
        pool's own task, so a cancelled ``aclose()`` only stops waiting for it;
        a later call (leaving ``open_pool`` makes one) waits for the same
        shutdown, which ends within ``shutdown_grace`` plus the time to stop
        the workers.
        """
        if not self._closing.is_set():
            self._begin_close()
        await self._closed.wait()

    # --- internals: checkout -----------------------------------------------------

    async def _acquire(self, session: str | None, timeout: float | None, *,
                       checkpoint: bool = True, decision: Decision | None = None) -> Lease:
        if decision is None:
            decision = self._breaker.allow()
        if not decision.allowed and not self._closing.is_set():
            await trio.lowlevel.checkpoint()
            # The breaker opened because no worker starts: say why first.
            unstartable = self._failures.unstartable()
            if unstartable is not None:
                raise unstartable
            raise PoolUnavailable(reason=decision.reason, retry_in=decision.retry_in,
                                  pool=self.label)
        if not decision.probe:
            return await self._acquire_lease(session, timeout, checkpoint)
        # Half-open: this checkout is the probe that decides whether to close.
        try:
            lease = await self._acquire_lease(session, timeout, checkpoint)
        except trio.Cancelled:
            self._breaker.probe_abandoned(decision.generation)
            raise
        except BaseException:
            self._breaker.probe_finished(False, decision.generation)
            raise
        self._breaker.probe_finished(True, decision.generation)
        return lease

    def _check_run(self) -> None:
        """Refuse a caller from another Trio run before it touches this run's
        tasks, events or clock."""
        if trio.lowlevel.current_trio_token() is not self._run_token:
            raise RuntimeError(
                f"pool {self.label} belongs to the Trio run that opened it and was called "
                "from another one (a trio.run in another thread?); from a thread, call it "
                "with trio.from_thread.run(pool.call, ...) instead")

    async def _acquire_lease(self, session: str | None, timeout: float | None,
                             checkpoint: bool) -> Lease:
        self._check_run()
        started = self._now()
        core = self._core
        waiter = core.request(
            session, self.config.checkout_timeout if timeout is None else timeout,
            now=started)
        self._flush()
        if waiter.status is WaiterStatus.FAILED or (
                checkpoint and waiter.status is WaiterStatus.GRANTED):
            # Served (or refused) at once: still a checkpoint, as every Trio
            # blocking call is. pool.call skips it: its call checkpoints anyway.
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                core.cancel(waiter.id)
                self._flush()
                raise
        yielded = checkpoint
        if waiter.status is WaiterStatus.QUEUED and not self._live_count:
            # No live worker: if none can start, say so now rather than
            # after checkout_timeout (a queued checkout is failed by
            # _fail_unstartable when that becomes true).
            unstartable = self._failures.unstartable()
            if unstartable is not None:
                core.cancel(waiter.id)
                self._flush()
                await trio.lowlevel.checkpoint()
                raise unstartable
        while True:
            if waiter.status is WaiterStatus.QUEUED:
                await self._wait(waiter)
                yielded = True
            if waiter.status is WaiterStatus.FAILED:
                core.cancel(waiter.id)
                error = waiter.error
                assert error is not None
                if type(error) is PoolTimeout:
                    error = self._explained(error)
                elif type(error) is SessionLost and session is not None:
                    binding = core.bindings.get(session)
                    if binding is not None and binding.lost is None \
                            and binding.worker_id == error.worker_id:
                        core.unbind(session)  # reported now (_lost_at_handoff): once
                        self._flush()
                raise error
            assert waiter.slot is not None
            worker = self._rows[waiter.slot].worker
            # The hand-off check ran when the worker was granted; if this task
            # slept since, the worker may have died in between: check again.
            if worker is not None and not worker.dirty and (
                    worker.is_alive() if yielded else worker.exit_info is None):
                break
            core.reject_grant(waiter.id, "process_dead at receipt")
            self._flush()
        if not core.receive(waiter.id):  # pragma: no cover - defensive
            raise PoolClosed(pool=self.label)
        lease = Lease(self._lease_context, waiter.id, waiter.slot, worker, session)
        self._held.by_token[waiter.id] = lease
        # Served without sleeping: no wait worth a clock read.
        wait = self._now() - started if yielded else 0.0
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
        queued = _Queued(self._core, self._parked, waiter_id)
        entry = None
        if waiter.deadline is not None:
            entry = self._timer.deadlines.add(waiter.deadline, queued)
        try:
            while waiter.status is WaiterStatus.QUEUED:
                self._parked[waiter_id] = trio.lowlevel.current_task()
                try:
                    await trio.lowlevel.wait_task_rescheduled(queued.abort)
                except BaseException:
                    # Cancelled while queued (a grant reschedules the task, so it
                    # can't be cancelled after one): the core forgets the waiter.
                    self._core.cancel(waiter_id)
                    self._flush()
                    raise
        finally:
            if entry is not None:
                Deadlines.remove(entry)

    def _lost_at_handoff(self, slot: Slot, session: str) -> SessionLost | None:
        """``affinity="hint"``: the session's own worker is found dead at
        hand-off. Its state is gone, and this call is the first to observe it:
        SessionLost now (the shell then unbinds the session), rather than
        running silently elsewhere and the next call hearing of the loss.
        (``strict`` waits for the slot task, which reports it the same way.)"""
        binding = self._core.bindings.get(session)
        if binding is None or binding.lost is not None or binding.slot != slot.index \
                or binding.generation != slot.generation:
            return None
        return SessionLost(session=session, worker_id=binding.worker_id, pid=slot.pid,
                           reason="died (found when the session was next used)")

    def _fail_unstartable(self) -> None:
        """No worker can start (FailureTracker): fail the queued checkouts now."""
        unstartable = self._failures.unstartable
        self._core.fail_queued(lambda: unstartable() or PoolClosed(pool=self.label))
        self._flush()

    def _explained(self, timeout: PoolTimeout) -> PoolTimeout:
        """The PoolTimeout with the pool's own view added: whether any worker is
        busy (when none is, shortening calls would not help) and the last start
        failure, if there was one."""
        last = self._failures.current_start_error
        explained = PoolTimeout(
            timeout=timeout.timeout, session=timeout.session, pool=timeout.pool,
            waiting=timeout.waiting, reason=timeout.reason,
            busy=self._core.state_counts[WorkerState.BUSY],
            last_start_failure=None if last is None else start_cause(last)[0])
        explained.__cause__ = last
        return explained

    def _vet(self, slot: Slot, waiter: Waiter) -> Verdict:
        """Safe hand-off: is this worker fit to be handed over right now?"""
        worker = self._rows[slot.index].worker
        fault = _FAULTS.get("before_handoff")
        if fault is not None and worker is not None:
            fault(self, slot.index, worker)
        if worker is None:
            return Verdict(Remove("not_ready: no worker"), by_policy=False)
        if not worker.is_alive():
            if waiter.session is not None and self.config.affinity == "hint":
                lost = self._lost_at_handoff(slot, waiter.session)
                if lost is not None:
                    return Verdict(Skip(lost), by_policy=False)
            return Verdict(Remove("process_dead"), by_policy=False)
        if worker.dirty:
            return Verdict(Remove("pipe_closed"), by_policy=False)
        if slot.state is not WorkerState.READY:
            return Verdict(Remove("not_ready"), by_policy=False)
        if self._default_policy:
            return _OK_VERDICT  # nothing to ask: skip building the policy's view
        request = CheckoutRequest(waiter.session, self._now() - waiter.enqueued_at)
        verdict = vet_checkout(self._policy, self._info(slot, worker), request)
        if verdict.violation is not None:
            # Count it only: the core emits the telemetry event for every
            # checkout verdict it is handed (emitting here too sent it twice).
            self._metrics.increment("contract_violations")
        return verdict

    def _vet_checkin(self, index: int, worker: WorkerHandle, clean: bool,
                     error: BaseException | None, calls: int, draining: bool) -> str | None:
        """A custom policy's ``on_checkin``: the Remove reason, or None to keep."""
        info = self._info(self._core.slots[index], worker)
        verdict = vet_checkin(self._policy, info, CheckinOutcome(clean, error, calls, draining))
        if verdict.violation is not None:
            self._report_violation(verdict, index)
        if isinstance(verdict.decision, Remove):
            return verdict.decision.reason
        return None

    def _info(self, slot: Slot, worker: WorkerHandle) -> WorkerInfo:
        return WorkerInfo(worker_id=worker.worker_id, pid=worker.pid, slot=slot.index,
                          calls=slot.calls, sessions=len(slot.sessions),
                          age=self._now() - slot.ready_at)

    def _report_violation(self, verdict: Verdict, slot: int) -> None:
        assert verdict.violation is not None
        self._metrics.increment("contract_violations")
        telemetry.emit(telemetry.CONTRACT_VIOLATION, {},
                       {"pool": self.label, "slot": slot,
                        "callback": verdict.violation.callback,
                        "value": repr(verdict.violation.value)})

    # --- internals: actions and accounting -----------------------------------------

    def _flush(self) -> None:
        """Perform the actions the core asked for."""
        core = self._core
        for action in core.take_actions() if core.actions else ():
            if isinstance(action, Wake):
                task = self._parked.pop(action.waiter, None)
                if task is not None:
                    trio.lowlevel.reschedule(task)
            elif isinstance(action, StartWorker):
                self._rows[action.slot].supervisor.request_start()
            elif isinstance(action, StopWorker):
                self._rows[action.slot].supervisor.request_stop(action.reason,
                                                                action.graceful)
            elif isinstance(action, Emit):
                telemetry.emit(action.event, action.measurements,
                               {"pool": self.label, **action.metadata})
            elif isinstance(action, DrainWorker):
                assert self._tasks is not None  # a lease was checked in: the pool runs
                self._tasks.start_soon(drain_worker, self._drain_context, action.slot,
                                       action.generation)
        counts = core.state_counts
        # A draining worker is not counted: wait_ready() waits until it is back,
        # and wait_until() is woken when it goes and when it comes back.
        live = counts[WorkerState.READY] + counts[WorkerState.BUSY] \
            + counts[WorkerState.DEGRADED]
        stopped = counts[WorkerState.STOPPED]
        # AsyncValue wakes its waiters on every assignment; assign only changes
        # (compared against plain ints: its property getter is not free).
        if self._live_count != live:
            self._live_count = self._live.value = live
            self._live_changes.value += 1
        if self._stopped_count != stopped:
            self._stopped_count = self._stopped.value = stopped

    def _record_call(self, command: str, duration: float, outcome: str,
                     worker: WorkerHandle) -> None:
        self._call_latency.record(duration)
        counter = _OUTCOME_COUNTERS.get(outcome)
        if counter is None:
            counter = _OUTCOME_COUNTERS[outcome] = f"calls_{outcome}"
        self._metrics.increment(counter)
        if telemetry.active():
            telemetry.emit(telemetry.CALL, {"duration": duration},
                           {"pool": self.label, "command": command, "outcome": outcome,
                            "worker_id": worker.worker_id})

    def _breaker_moved(self, old: Any, new: Any, reason: str) -> None:
        old, new = getattr(old, "value", old), getattr(new, "value", new)
        logger.warning("circuit breaker %s -> %s: %s", old, new, reason)
        telemetry.emit(telemetry.BREAKER_TRANSITION, {},
                       {"pool": self.label, "old": old, "new": new, "reason": reason})
        if new == "open" and not self._closing.is_set() and self._tasks is not None:
            self._tasks.start_soon(self._breaker_timer)

    async def _breaker_timer(self) -> None:
        # The breaker moves to half-open lazily, when someone looks; look on time
        # so the transition (and its event) happens even with no checkouts.
        await trio.sleep(self.config.breaker_reset)
        _ = self._breaker.state

    # --- internals: start and shutdown ---------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) \
            -> None:
        """Run the background tasks (slots, timer, upkeep) in a nursery of their
        own, so that the shutdown can stop them without touching the body of
        ``open_pool``."""
        config = self.config
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            for row in self._rows:
                tasks.start_soon(row.supervisor.run)
            tasks.start_soon(self._timer.run)
            upkeep = HealthContext(
                config=config, label=self.label, core=self._core, flush=self._flush,
                table=self._table, clock=self._now, deadlines=self._timer.deadlines,
                breaker_failure=self._breaker.record_failure, end_session=self.end_session)
            if config.health_interval is not None:
                tasks.start_soon(run_health_checks, upkeep)
            if config.session_ttl is not None:
                tasks.start_soon(run_session_expiry, upkeep)
            if config.idle_retire is not None:
                tasks.start_soon(run_idle_retirement, upkeep)
            telemetry.emit(telemetry.POOL_START, {"size": config.size},
                           {"pool": self.label, "app": config.app})
            self._core.start()
            self._flush()
            task_status.started()

    def _begin_close(self) -> None:
        self._closing.set()
        telemetry.emit(telemetry.POOL_STOP, {}, {"pool": self.label})
        self._core.close()
        self._flush()
        self._nursery.start_soon(self._shut_down)

    async def _shut_down(self) -> None:
        # Shielded: nobody's cancellation (an aclose() given up on, the nursery
        # cancelled by a failing task) may leave workers running or the pool
        # never closed. Bounded by shutdown_grace plus the time to stop workers.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.config.shutdown_grace):
                await self._held.wait_drained()
            for lease in list(self._held.by_token.values()):
                # Tell the slot first, so the kill is recorded as a stop, not a crash.
                self._rows[lease.slot].supervisor.expect_kill()
                revoke(lease)
            core = self._core
            for slot in core.slots:
                core.retire(slot.index, "pool closing", graceful=False)
                if slot.state is WorkerState.BUSY:
                    self._rows[slot.index].supervisor.request_stop(
                        "pool closing: lease cancelled", graceful=False)
            self._flush()
            await self._stopped.wait_value(lambda v: v >= self.config.size)
            if self._tasks is not None:
                self._tasks.cancel_scope.cancel()
            self._closed.set()


class _Queued:
    """A checkout parked in the queue: what its deadline and a cancellation do."""

    __slots__ = ("core", "parked", "waiter_id")

    def __init__(self, core: PoolCore, parked: dict[int, trio.lowlevel.Task],
                 waiter_id: int) -> None:
        self.core = core
        self.parked = parked
        self.waiter_id = waiter_id

    def deadline_passed(self) -> None:
        # The timer: checkout_timeout passed (the core fails it with PoolTimeout
        # and wakes the task, unless it was served meanwhile).
        self.core.expire(self.waiter_id)

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        # Cancelled while parked: it no longer waits for a Wake.
        self.parked.pop(self.waiter_id, None)
        return trio.lowlevel.Abort.SUCCEEDED


_FAULTS: dict[str, Any] = {}


def set_fault(point: str, hook: Any) -> None:
    """Test kit seam: run ``hook(pool, slot, worker)`` at a named hand-off point."""
    if point not in ("before_handoff",):
        raise ValueError(f"unknown fault point {point!r}; known: before_handoff")
    if hook is None:
        _FAULTS.pop(point, None)
    else:
        _FAULTS[point] = hook


def refuse_while_adopting() -> None:
    """Refuse to start a pool in a worker that is running its parent's main
    script for ``run_sync`` (see :mod:`engine.workers.pickled`): that script
    lacks the ``if __name__ == "__main__":`` guard, and would start pools of
    grandchildren and fail obscurely (``No module named '__mp_main__'``)."""
    script = adopting_parent_main()
    if script is not None:
        raise RuntimeError(
            f"a run_sync worker ran the parent's main script ({script}) to find the "
            "function it was sent, and the script started a pool while being imported: "
            "put the script's start-up (trio.run(...)) under "
            "`if __name__ == \"__main__\":`, as with multiprocessing")


def require_trio_run(what: str) -> None:
    """Refuse, saying what is needed, to run outside a Trio run: Trio's own
    errors there are obscure (``must be called from async context``, or an
    AttributeError from deep inside), and anyio's default backend is asyncio."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        where = "outside one"
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None:
            try:
                asyncio.get_running_loop()
                where = ("from asyncio (with anyio, run on its Trio backend: "
                         "anyio.run(main, backend=\"trio\"))")
            except RuntimeError:
                pass  # no asyncio loop either
        raise RuntimeError(f"{what} runs inside a Trio run (trio.run(main)); it was called "
                           f"{where}") from None


@asynccontextmanager
async def open_pool(config: PoolConfig | None = None, **overrides: Any) -> AsyncIterator[Pool]:
    """Start a pool; leaving the block closes it and waits for every worker process.

    ``open_pool(config=None, **overrides)``: any PoolConfig field may be given as a
    keyword. Invalid values raise ValueError naming the field.
    """
    require_trio_run("engine.open_pool")
    refuse_while_adopting()
    cfg = make_config(config, overrides)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pool = Pool(cfg, nursery)
            await nursery.start(pool._run)
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
        # Trio may re-derive a group the body raised (its own nursery's)
        # while it passes through our scopes, so it is recognised by its
        # leaves: when they are exactly the body's, the body's exception
        # comes out as itself, not wrapped in ours.
        leaves = _leaves(group)
        if body_error is not None and _same_leaves(leaves, _leaves(body_error)):
            # from its own cause: a RemoteError keeps its remote traceback
            raise body_error from body_error.__cause__
        if len(leaves) == 1 and isinstance(leaves[0], IncompleteWorkerHandle):
            raise leaves[0] from leaves[0].__cause__
        raise


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in a (possibly nested: the background tasks have a
    nursery of their own) group; a plain exception is its own leaf."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in _leaves(inner)]


def _same_leaves(ours: list[BaseException], body: list[BaseException]) -> bool:
    return len(ours) == len(body) and all(
        any(leaf is other for other in body) for leaf in ours)


__all__ = ["EngineError", "Lease", "Pool", "PoolStatistics", "PoolView", "open_pool", "set_fault"]
