"""Regression tests for bugs found reviewing the no-cancel-scope hot path
(commit 42b5426 on): deadlines that a call could lose. Each test failed
before its fix.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.errors import CallTimeout
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.workers.handle import SpawnRequest, WorkerHandle
from engine.workers.transport import PeerGone, PipeTransport

VIRTUAL_GUARD = 1000.0  # virtual seconds: a lost deadline fails the test, not hangs it


# --- PipeTransport.write: an abort between wake-up and resumption is lost -------------


class _AbortWhenWoken(trio.abc.Instrument):
    """Abort the transport right after epoll woke ``task_name`` from
    ``wait_writable`` and before that task runs: the window in which the pool
    timer's ``time_out`` (or the exit watcher's abort) can land."""

    def __init__(self, task_name: str, transport: PipeTransport) -> None:
        self.task_name = task_name
        self.transport = transport
        self.woken = False
        self.fired = False

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.task_name:
            self.woken = True

    def after_io_wait(self, timeout: float) -> None:
        if self.woken and not self.fired and self.transport._waiting_on is not None:
            self.fired = True
            self.transport.abort()


@pytest.mark.layer2
async def test_pipe_write_abort_landing_after_the_wake_up_is_not_lost() -> None:
    # A large request to a worker that reads slowly: the write parks in
    # wait_writable. The worker reads a little (the fd becomes writable, epoll
    # reschedules the writer) and, before the writer runs, the call is aborted
    # (its deadline passed). abort() notifies the fd, but nobody is registered
    # on it any more; the write loop never looks at _aborted again, fills the
    # pipe and parks in wait_writable for good: the call hangs past its
    # deadline until the worker reads again (never, if it is stuck).
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    transport = PipeTransport(write_fd, read_fd)
    outcome: list[str] = []

    async def writer() -> None:
        try:
            await transport.write(b"x" * (1 << 20))
            outcome.append("written")
        except PeerGone as exc:
            outcome.append(f"gone: {exc}")

    instrument = _AbortWhenWoken("writer", transport)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, name="writer")
            await trio.testing.wait_all_tasks_blocked()
            assert transport._waiting_on == write_fd  # parked: the pipe is full
            trio.lowlevel.add_instrument(instrument)
            try:
                os.read(read_fd, 65536)  # the worker reads a little
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert instrument.fired  # the abort landed in the window
            blocked_again = outcome == []
            # Unblock the writer either way (EPIPE), so the test ends.
            os.close(read_fd)
            read_fd = -1
        assert not blocked_again, "the aborted write went back to sleep in wait_writable"
        assert outcome and outcome[0].startswith("gone")
    finally:
        if read_fd != -1:
            os.close(read_fd)
        os.close(write_fd)


# --- Lease.call: a refused concurrent call wipes the in-flight call's deadline --------


@pytest.mark.layer2
async def test_busy_lease_call_keeps_the_deadline_of_the_call_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    # A second call on a lease whose first call is in flight is refused with
    # BusyResourceError. Lease.call used to overwrite lease.deadline first and
    # reset it to inf in its `finally`: the first call was no longer watched by
    # the pool timer and never timed out.
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=1,
                                    call_timeout=5.0) as pool:
            await pool.wait_ready()
            outcome: list[tuple[str, float]] = []
            async with pool.checkout() as lease:
                async def first() -> None:
                    with pytest.raises(CallTimeout):
                        await lease.call("hang")
                    outcome.append(("timeout", trio.current_time()))

                async def second() -> None:
                    with pytest.raises(trio.BusyResourceError):
                        await lease.call("echo", 1)
                    outcome.append(("busy", trio.current_time()))

                started = trio.current_time()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(second)
                    await trio.testing.wait_all_tasks_blocked()
                    # The first call is still in flight: its deadline must stand.
                    assert lease.deadline == pytest.approx(started + 5.0)
            assert outcome == [("busy", started), ("timeout", pytest.approx(started + 5.0))]


# --- a handle that subclasses the WorkerHandle protocol inherits a no-op time_out ------


class _ExplicitHandle(WorkerHandle):
    """A custom handle that names the protocol as its base (a common way to
    declare conformance). It inherits WorkerHandle.time_out, the protocol's stub,
    which can't end a call."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def worker_id(self) -> str:
        return self._inner.worker_id  # type: ignore[no-any-return]

    @property
    def pid(self) -> int | None:
        return self._inner.pid  # type: ignore[no-any-return]

    @property
    def hello(self) -> Any:
        return self._inner.hello

    @property
    def dirty(self) -> bool:
        return self._inner.dirty  # type: ignore[no-any-return]

    @property
    def exit_info(self) -> Any:
        return self._inner.exit_info

    def is_alive(self) -> bool:
        return self._inner.is_alive()  # type: ignore[no-any-return]

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None) -> Any:
        return await self._inner.call(command, args, session=session, timeout=timeout)

    async def wait_exited(self) -> Any:
        return await self._inner.wait_exited()

    def kill(self) -> None:
        self._inner.kill()

    def stderr_tail(self) -> tuple[str, ...]:
        return self._inner.stderr_tail()  # type: ignore[no-any-return]


@pytest.mark.layer2
async def test_call_timeout_holds_for_a_handle_subclassing_the_protocol(
        autojump_clock: trio.testing.MockClock) -> None:
    # Pool.timer_can_end_calls used to see a callable time_out (the protocol's
    # stub), so the call got timeout=None and relied on time_out(), which did
    # nothing: call_timeout was silently not enforced (it was before 42b5426).
    fakes = FakeWorkerFactory(Script())

    @asynccontextmanager
    async def factory(request: SpawnRequest) -> AsyncIterator[Any]:
        async with fakes(request) as worker:
            yield _ExplicitHandle(worker)  # type: ignore[abstract]

    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=1,
                                    call_timeout=3.0) as pool:
            await pool.wait_ready()
            started = trio.current_time()
            with trio.move_on_after(100.0) as guard:
                with pytest.raises(CallTimeout):
                    await pool.call("hang")
            assert not guard.cancelled_caught, "call_timeout=3 was not enforced"
            assert trio.current_time() - started == pytest.approx(3.0)
