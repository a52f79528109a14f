"""Drive one Trio run from synchronous code: the guest-mode driver for state machines.

Hypothesis' ``RuleBasedStateMachine`` calls rules synchronously, and
``hypothesis-trio`` no longer imports. So each example starts its own Trio run
in *guest mode* (``trio.lowlevel.start_guest_run``) whose host loop is a plain
queue of callbacks in the calling thread. The run only makes progress while the
host executes those callbacks, which is what :meth:`TrioDriver.pump` does; a
rule spawns tasks, pumps until the run is idle (or a condition holds), then
inspects state with the run frozen. Nothing in the run moves between pumps, so
invariants see a consistent snapshot.

Time: with a ``MockClock`` (``rate=0``, no autojump, the default for fakes) time
stands still until :meth:`TrioDriver.advance` moves it, stepping from deadline to
deadline so that every timer fires in order. A state machine can then hold
checkouts pending for as long as it likes and decide when timeouts expire.
With the real clock (real subprocesses) use ``pump(until=...)``: "idle" only
means "waiting for I/O" there.

Trio's scheduler is made deterministic under Hypothesis (Trio registers its
scheduler's random generator with Hypothesis), so examples replay and shrink.

Typical use inside a state machine::

    driver = TrioDriver(clock=trio.testing.MockClock())
    driver.start()
    pool = driver.enter(open_pool(worker_factory=FakeWorkerFactory(), size=2))
    task = driver.spawn(pool.call, "echo", [1])
    driver.pump()
    assert task.result == [1]
    driver.close()   # cancels what is left, re-raises any crash of the run
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio
import trio.testing

__all__ = ["ContextHandle", "DriverError", "DriverTimeout", "Stalled", "TaskHandle",
           "TrioDriver"]

T = TypeVar("T")


class DriverError(RuntimeError):
    """The driven run did not behave: it finished early, or it was misused."""


class DriverTimeout(DriverError):
    """The condition did not hold within the real-time budget (or the run never idled)."""


class Stalled(DriverError):
    """Virtual time: the run is idle and nothing can change, yet the condition is false."""


@attrs.define(eq=False)
class TaskHandle(Generic[T]):
    """A task spawned by :meth:`TrioDriver.spawn`; inspect it between pumps.

    ``done`` once the task finished: with a value (``result``), an ``Exception``
    (``exception``; the run goes on) or cancelled by :meth:`cancel`
    (``cancelled``). Exceptions that are not ``Exception`` subclasses (e.g.
    KeyboardInterrupt) crash the run and are re-raised by :meth:`TrioDriver.close`.
    """

    name: str
    _driver: TrioDriver
    done: bool = False
    cancelled: bool = False
    value: Any = None
    exception: BaseException | None = None
    task: trio.lowlevel.Task | None = None
    _scope: trio.CancelScope | None = None
    _cancel_requested: bool = False

    @property
    def result(self) -> T:
        """The task's return value; re-raises its exception; errors if not finished."""
        if not self.done:
            raise DriverError(f"task {self.name} has not finished")
        if self.exception is not None:
            raise self.exception
        if self.cancelled:
            raise DriverError(f"task {self.name} was cancelled")
        return self.value  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Cancel the task (takes effect at the next pump)."""
        self._cancel_requested = True
        self._driver.call_soon(self.cancel_from_run)

    def cancel_from_run(self) -> None:
        """Cancel the task now, from code running inside the Trio run (a task,
        a fault hook): unlike :meth:`cancel`, it does not wait for a pump."""
        if self._scope is not None:
            self._scope.cancel()


@attrs.define(eq=False)
class ContextHandle(Generic[T]):
    """An async context manager held open inside the run by :meth:`TrioDriver.enter`."""

    value: T
    task: TaskHandle[None]
    _exit_event: trio.Event
    _driver: TrioDriver

    def exit(self, *, autojump: bool = True, timeout: float | None = None) -> None:
        """Leave the context (inside the run) and pump until it has exited.

        Re-raises what the context manager raised on exit.
        """
        self._driver.call_soon(self._exit_event.set)
        self._driver.pump(until=lambda: self.task.done, autojump=autojump, timeout=timeout)
        if self.task.exception is not None:
            raise self.task.exception


class _IdleProbe(trio.abc.Instrument):
    """Tells the host whether the run has nothing to do until time passes or I/O arrives.

    ``before_io_wait`` runs once per scheduler pass, just before the run would
    block: idle means no task runnable, no ``run_sync_soon`` callback pending and
    a positive timeout (a zero timeout means something is due now, or a task is
    in ``wait_all_tasks_blocked``).
    """

    def __init__(self) -> None:
        self.idle = False
        self.passes = 0

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1
        stats = trio.lowlevel.current_statistics()
        self.idle = (timeout > 0 and stats.tasks_runnable == 0
                     and stats.run_sync_soon_queue_size == 0)


class TrioDriver:
    """One Trio run in guest mode, pumped from synchronous code.

    ``clock``: a ``trio.testing.MockClock`` (virtual time: the run idles instead of
    sleeping, and :meth:`advance` moves time) or None for the real clock.
    ``timeout``: real seconds a single pump may wait for I/O before giving up
    with :class:`DriverTimeout` (a hung run fails the example instead of the suite).
    ``max_passes``: scheduler passes a single pump may take (livelock guard).
    """

    def __init__(self, *, clock: trio.abc.Clock | None = None, timeout: float = 30.0,
                 max_passes: int = 1_000_000) -> None:
        if isinstance(clock, trio.testing.MockClock) and \
                (clock.autojump_threshold != math.inf or clock.rate != 0):
            # An autojumping clock never lets the run look idle, so pump() could
            # not tell "settled" from "busy"; advance() and pump(autojump=True)
            # move virtual time instead, under the host's control.
            raise ValueError("TrioDriver needs MockClock(rate=0) without autojump; use "
                             "advance() or pump(autojump=True) to move time")
        self.clock = clock
        self.timeout = timeout
        self.max_passes = max_passes
        self._queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._probe = _IdleProbe()
        self._outcome: outcome.Outcome[None] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._callback_errors: list[BaseException] = []
        self.tasks: list[TaskHandle[Any]] = []
        self._started = False

    # --- state ---------------------------------------------------------------------

    @property
    def virtual_time(self) -> bool:
        """True with a MockClock: an idle run stays idle until the host acts."""
        return isinstance(self.clock, trio.testing.MockClock)

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    @property
    def idle(self) -> bool:
        return self._probe.idle

    # --- start and stop ------------------------------------------------------------

    def start(self) -> None:
        """Start the run (a root nursery that hosts spawned tasks) and pump until it is up."""
        if self._started:
            raise DriverError("TrioDriver.start() called twice")
        self._started = True
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self._queue.put,
            run_sync_soon_not_threadsafe=self._queue.put,
            done_callback=self._done,
            clock=self.clock,
            instruments=[self._probe],
        )
        self.pump(until=lambda: self._nursery is not None or self.finished)
        if self._nursery is None:
            self._raise_outcome()
            raise DriverError("the run ended before it started")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await trio.sleep_forever()

    def _done(self, result: outcome.Outcome[None]) -> None:
        self._outcome = result

    def close(self, *, timeout: float | None = None) -> None:
        """Cancel everything, pump the run to completion and re-raise any crash.

        Under virtual time, time jumps from deadline to deadline while the run
        winds down (shielded cleanups that wait for a grace period finish).
        Idempotent.
        """
        if not self._started:
            return
        if not self.finished and self._nursery is not None:
            self.call_soon(self._nursery.cancel_scope.cancel)
        if not self.finished:
            self.pump(until=lambda: self.finished, autojump=True, timeout=timeout)
        self._raise_outcome()

    def _raise_outcome(self) -> None:
        if self._callback_errors:
            errors, self._callback_errors = self._callback_errors, []
            raise BaseExceptionGroup("driver callbacks failed inside the run", errors)
        if self._outcome is not None:
            self._outcome.unwrap()

    # --- putting work into the run -------------------------------------------------

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` synchronously inside the run at the next pump.

        An exception it raises is kept and re-raised by :meth:`close` (it must not
        crash Trio's run_sync_soon machinery).
        """
        if self._token is None:
            raise DriverError("the run is not started")
        if self.finished:
            raise DriverError("the run has finished")

        def callback() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by close()
                self._callback_errors.append(exc)

        self._probe.idle = False
        self._token.run_sync_soon(callback)

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Call ``fn(*args)`` inside the run (Trio APIs work there) and return its value."""
        box: list[outcome.Outcome[T]] = []
        self.call_soon(lambda: box.append(outcome.capture(fn, *args)))
        self.pump(until=lambda: bool(box), timeout=timeout)
        return box[0].unwrap()

    def spawn(self, fn: Callable[..., Awaitable[T]], *args: Any,
              name: str | None = None) -> TaskHandle[T]:
        """Start ``fn(*args)`` as a task in the run's nursery (at the next pump)."""
        if self._nursery is None:
            raise DriverError("the run is not started")
        label: str = name or str(getattr(fn, "__qualname__", repr(fn)))
        handle: TaskHandle[T] = TaskHandle(label, self)
        self.tasks.append(handle)
        nursery = self._nursery

        async def run() -> None:
            handle.task = trio.lowlevel.current_task()
            with trio.CancelScope() as scope:
                handle._scope = scope
                if handle._cancel_requested:
                    scope.cancel()
                try:
                    handle.value = await fn(*args)
                except Exception as exc:
                    handle.exception = exc
            handle.cancelled = scope.cancelled_caught
            handle.done = True

        self.call_soon(lambda: nursery.start_soon(run, name=label))
        return handle

    def enter(self, cm: AbstractAsyncContextManager[T], *, autojump: bool = False,
              timeout: float | None = None) -> T:
        """Enter ``cm`` in a task that keeps it open; returns what it yields.

        Use :meth:`enter_handle` to leave it before :meth:`close`.
        """
        return self.enter_handle(cm, autojump=autojump, timeout=timeout).value

    def enter_handle(self, cm: AbstractAsyncContextManager[T], *, autojump: bool = False,
                     timeout: float | None = None) -> ContextHandle[T]:
        entered: list[T] = []
        exit_event = trio.Event()

        async def hold() -> None:
            async with cm as value:
                entered.append(value)
                await exit_event.wait()

        task = self.spawn(hold, name=f"enter {type(cm).__name__}")
        self.pump(until=lambda: bool(entered) or task.done, autojump=autojump,
                  timeout=timeout)
        if not entered:
            if task.exception is not None:
                raise task.exception
            raise DriverError(f"{cm!r} ended without yielding")
        return ContextHandle(entered[0], task, exit_event, self)

    # --- pumping -------------------------------------------------------------------

    def pump(self, until: Callable[[], bool] | None = None, *, autojump: bool = False,
             timeout: float | None = None) -> None:
        """Run queued callbacks until ``until()`` holds, or until the run is idle.

        ``autojump`` (virtual time only): when the run is idle and ``until`` does
        not hold, jump to the next deadline and go on, like MockClock's autojump.
        Raises :class:`Stalled` when, under virtual time, the run is idle with no
        deadline left and ``until`` is still false; :class:`DriverTimeout` after
        ``timeout`` real seconds (default: the driver's) or ``max_passes`` passes.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        passes = 0
        while True:
            if until is not None and until():
                return
            if self.finished:
                if until is None:
                    return
                self._raise_outcome()
                raise DriverError("the run finished before the condition held")
            if self._probe.idle:
                if until is None:
                    return
                if self.virtual_time:
                    if not autojump or not self._jump_to_next_deadline():
                        raise Stalled("the run is idle (virtual time) and the awaited "
                                      "condition can never become true")
                    continue
            try:
                callback = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DriverTimeout(f"nothing happened within {budget:g}s") from None
                try:
                    callback = self._queue.get(timeout=remaining)
                except queue.Empty:
                    raise DriverTimeout(f"nothing happened within {budget:g}s") from None
            callback()
            passes += 1
            if passes > self.max_passes or time.monotonic() > deadline:
                raise DriverTimeout(
                    f"the run did not settle within {budget:g}s / {self.max_passes} passes "
                    "(a task keeps itself runnable?)")

    # --- virtual time ----------------------------------------------------------------

    def now(self) -> float:
        """The run's current time (``trio.current_time()``)."""
        return self.run_sync(trio.current_time)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds``, firing every deadline on the way.

        Steps from deadline to deadline, letting the run go idle at each, so a
        timer started by an earlier one (a backoff, then a slow start) still fires
        if it falls within the window.
        """
        if not isinstance(self.clock, trio.testing.MockClock):
            raise DriverError("advance() needs a trio.testing.MockClock")
        if seconds < 0:
            raise ValueError("cannot go back in time")
        self.pump()
        target = self.now() + seconds
        for _ in range(100_000):
            now, following = self.run_sync(_time_and_next_deadline)
            if following > target:
                break
            self._jump(following - now)
            self.pump()
        else:  # pragma: no cover - a timer that re-arms itself at the same instant
            raise DriverTimeout("advance(): deadlines keep expiring without time passing")
        now = self.now()
        if target > now:
            self._jump(target - now)
        self.pump()

    def _jump_to_next_deadline(self) -> bool:
        now, following = self.run_sync(_time_and_next_deadline)
        if math.isinf(following):
            return False
        self._jump(following - now)
        return True

    def _jump(self, seconds: float) -> None:
        clock = self.clock
        assert isinstance(clock, trio.testing.MockClock)

        def jump() -> None:
            start = clock.current_time()
            clock.jump(max(seconds, 0.0))
            # Float rounding can leave us a hair short of the deadline we aimed at.
            if seconds > 0 and clock.current_time() < start + seconds:
                clock.jump(start + seconds - clock.current_time() + 1e-9)

        self.run_sync(jump)


def _time_and_next_deadline() -> tuple[float, float]:
    now = trio.current_time()
    return now, now + trio.lowlevel.current_statistics().seconds_to_next_deadline
