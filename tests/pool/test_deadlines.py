"""Deadlines: the pool's single timer for queued checkouts, calls in flight and
health probes (the heap itself: tests/properties/test_deadline_properties.py).

* Layer 2: ``time_out`` on fake workers, and the pool timer over fake workers
  under an autojump ``MockClock`` (virtual time, so deadlines are checked
  exactly); ``time_out`` is required of every worker handle; regression tests
  for deadlines a call could lose.
* Layer 3: the same on real worker subprocesses.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.busy_poll import DEFAULT_BUSY_POLL, MAX_BUSY_POLL
from engine.errors import CallTimeout, PoolTimeout
from engine.pool.pool import Pool
from engine.process.handle import SpawnRequest, WorkerHandle
from engine.process.spawn import open_process_worker
from engine.process.transport import PipeTransport
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.testing.fixtures import wait_for_pool_ready
from tests.leaks import pid_alive

HANG_GUARD = 20.0  # generous: turns a hang into a failure, never a timing assertion
READY = 10.0
APP = "engine.workers.programs"


def frozen_clock(reads: int) -> Callable[[], float]:
    """Time stands still for ``reads`` reads of the clock, then leaps ahead."""
    count = itertools.count()
    return lambda: 1000.0 if next(count) < reads else 1e9


# --- layer 2: time_out and the pool timer over fake workers -----------------------------


REQUEST = SpawnRequest(worker_id="fake-0.1", app="fake", start_timeout=5.0)
VIRTUAL_GUARD = 1000.0  # virtual seconds: a deadline that never fires fails, not hangs


@asynccontextmanager
async def fake_pool(factory: FakeWorkerFactory, **overrides: Any) -> AsyncIterator[Pool]:
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, **overrides) as pool:
            await pool.wait_ready()
            yield pool


@pytest.mark.layer2
async def test_fake_worker_time_out_ends_the_call_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    async with FakeWorkerFactory()(REQUEST) as worker:
        worker.time_out(1.0)  # no call in flight: nothing happens
        assert await worker.call("echo", "fine") == "fine"
        assert not worker.dirty
        outcome: list[CallTimeout] = []

        async def hang() -> None:
            with pytest.raises(CallTimeout) as info:
                await worker.call("hang")
            outcome.append(info.value)

        with trio.fail_after(1.0):  # virtual: no time may pass at all
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await trio.testing.wait_all_tasks_blocked()
                started = trio.current_time()
                worker.time_out(7.5)
                worker.time_out(9.0)  # a second expiry is ignored
        assert trio.current_time() == started  # woken at once
        assert len(outcome) == 1
        assert outcome[0].timeout == 7.5 and outcome[0].command == "hang"
        assert outcome[0].worker_id == "fake-0.1"
        assert worker.dirty


@pytest.mark.layer2
async def test_queued_checkouts_expire_in_deadline_order(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with fake_pool(factory, size=1) as pool:
        expired: list[tuple[float, float, float]] = []  # asked, reported, waited

        async def queue(timeout: float) -> None:
            started = trio.current_time()
            with pytest.raises(PoolTimeout) as info:
                async with pool.checkout(timeout=timeout):
                    pytest.fail("the only worker is held")
            expired.append((timeout, info.value.timeout, trio.current_time() - started))

        async with pool.checkout() as held:
            async with trio.open_nursery() as nursery:
                # Latest deadline first: each later-queued, earlier deadline
                # must re-arm the timer.
                for timeout in (30.0, 20.0, 10.0):
                    nursery.start_soon(queue, timeout)
                    await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 3
            assert [asked for asked, _, _ in expired] == [10.0, 20.0, 30.0]
            for asked, reported, waited in expired:
                assert reported == pytest.approx(asked)
                assert waited == pytest.approx(asked)  # on time, virtual seconds
            assert pool.statistics().waiting == 0
            assert await held.call("echo", "still mine") == "still mine"
        assert await pool.call("echo", 1) == 1
        pool.check_invariants()
        assert pool.statistics().restarts == 0


@pytest.mark.layer2
async def test_queued_checkout_served_before_its_deadline_is_not_expired_later(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with fake_pool(factory, size=1, call_timeout=None) as pool:
        served: list[float] = []

        async def waiter() -> None:
            started = trio.current_time()
            async with pool.checkout(timeout=10.0) as lease:
                served.append(trio.current_time() - started)
                # Hold the lease well past the checkout's old deadline.
                assert await lease.call("sleep", {"seconds": 20}) == {"slept": 20}
                assert await lease.call("echo", "after") == "after"

        async with trio.open_nursery() as nursery:
            async with pool.checkout():
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 1
                await trio.sleep(4)  # the period the waiter stays queued
        assert served == [pytest.approx(4.0)]
        assert pool.statistics().restarts == 0 and len(factory.workers) == 1


@pytest.mark.layer2
async def test_cancelled_queued_checkout_leaves_the_queue(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with fake_pool(factory, size=1) as pool:
        served: list[tuple[str, float]] = []
        impatient = trio.CancelScope()

        async def first_in_line() -> None:
            with impatient:
                async with pool.checkout(timeout=50.0):
                    pytest.fail("cancelled while queued")

        async def second_in_line() -> None:
            async with pool.checkout(timeout=100.0) as lease:
                served.append((lease.worker_id, trio.current_time()))

        async with trio.open_nursery() as nursery:
            async with pool.checkout() as held:
                nursery.start_soon(first_in_line)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(second_in_line)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 2
                impatient.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert impatient.cancelled_caught
                # The cancelled task left the core's queue (and the parked tasks:
                # check_invariants compares them).
                assert pool.statistics().waiting == 1
                pool.check_invariants()
                released_at = trio.current_time()
            # The lease goes back: the remaining waiter is served, at once.
        assert served == [(held.worker_id, released_at)]
        assert pool.statistics().waiting == 0
        pool.check_invariants()


@pytest.mark.layer2
async def test_call_deadlines_share_the_pool_timer(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with fake_pool(factory, size=3, call_timeout=100.0) as pool:
        outcomes: dict[str, tuple[float, float, str | None]] = {}

        async def hang(name: str, timeout: float | None) -> None:
            started = trio.current_time()
            with pytest.raises(CallTimeout) as info:
                await pool.call("hang", timeout=timeout)
            outcomes[name] = (info.value.timeout, trio.current_time() - started,
                              info.value.worker_id)

        async def quick() -> None:
            assert await pool.call("sleep", {"seconds": 5}, timeout=50.0) == {"slept": 5}

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang, "default", None)  # the pool's call_timeout
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(quick)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hang, "short", 10.0)  # queued after, due before
        assert outcomes["short"][0] == 10.0 and outcomes["short"][1] == pytest.approx(10.0)
        assert outcomes["default"][0] == 100.0
        assert outcomes["default"][1] == pytest.approx(100.0)
        timed_out = {outcomes["short"][2], outcomes["default"][2]}
        # Both timed-out workers are replaced; the one that answered is kept.
        ready = set(await wait_for_pool_ready(pool, 3))
        assert not ready & timed_out and len(ready) == 3
        assert pool.statistics().restarts == 2
        assert len(factory.workers) == 5
        assert await pool.call("echo", "served") == "served"


# --- time_out is required of every worker handle ---------------------------------------


class _HandleWithoutTimeOut:
    """A custom worker handle that forwards everything but ``time_out``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "time_out":
            raise AttributeError(name)
        return getattr(self._inner, name)


class _ExplicitHandle(WorkerHandle):
    """A custom handle that names the protocol as its base (a common way to
    declare conformance) but implements no ``time_out``: it would inherit the
    protocol's stub, which ends nothing."""

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
@pytest.mark.parametrize("wrap", [_HandleWithoutTimeOut, _ExplicitHandle],
                         ids=["no-time_out", "protocol-stub"])
@pytest.mark.parametrize("size", [1, 3])
async def test_a_worker_handle_without_time_out_fails_the_pool_with_a_type_error(
        wrap: Callable[[Any], Any], size: int, autojump_clock: trio.testing.MockClock) -> None:
    # Once a call's deadline could only be enforced by time_out(), a handle
    # without it must not run calls whose timeout is silently ignored: the pool
    # refuses it when it first receives it, at once and loudly.
    fakes = FakeWorkerFactory(Script())

    @asynccontextmanager
    async def factory(request: SpawnRequest) -> AsyncIterator[Any]:
        async with fakes(request) as worker:
            yield wrap(worker)

    reached_body_end = False
    with trio.fail_after(VIRTUAL_GUARD):
        with pytest.raises(TypeError) as info:
            async with engine.open_pool(worker_factory=factory, size=size,
                                        call_timeout=3.0) as pool:
                await pool.wait_ready()
                reached_body_end = True
    assert not reached_body_end
    message = str(info.value)
    assert "time_out(timeout)" in message and "worker_factory" in message
    assert type(wrap(None)).__qualname__ in message
    assert trio.current_time() < 1.0  # at the first worker, not after timeouts
    assert not fakes.unreaped  # every fake worker was stopped and reaped


# --- layer 3: real workers --------------------------------------------------------------


BUSY_POLLS = [pytest.param(0.0, id="off"), pytest.param(DEFAULT_BUSY_POLL, id="default"),
              pytest.param(MAX_BUSY_POLL, id="max")]


@pytest.mark.layer3
@pytest.mark.parametrize("busy_poll", BUSY_POLLS[:2])
async def test_call_timeout_on_the_pool_timer_replaces_the_worker(busy_poll: float) -> None:
    """With cancel_grace=0 the timed-out worker is killed and replaced (with the
    default grace it is kept: test_call_timeout_on_the_pool_timer_keeps_the_worker)."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, call_timeout=0.5, busy_poll=busy_poll,
                                    cancel_grace=0) as pool:
            await pool.wait_ready(1, timeout=READY)
            [old] = pool.worker_pids()
            assert await pool.call("sleep", {"seconds": 0}) == {"slept": 0}
            with pytest.raises(CallTimeout) as info:
                await pool.call("sleep", {"seconds": 30})
            assert not isinstance(info.value, PoolTimeout)
            assert info.value.timeout == 0.5
            assert info.value.pid == old and info.value.command == "sleep"
            # The next call waits for the replacement.
            answer = await pool.call("ping")
            await pool.wait_ready(1, timeout=READY)
            assert pool.worker_pids() == [answer["pid"]]
            assert answer["pid"] != old
            assert not pid_alive(old)
            assert pool.statistics().restarts == 1
            assert [await pool.call("echo", i) for i in range(5)] == list(range(5))
            pool.check_invariants()


@pytest.mark.layer3
@pytest.mark.parametrize("busy_poll", [0.0, DEFAULT_BUSY_POLL], ids=["off", "default"])
async def test_call_timeout_on_the_pool_timer_keeps_the_worker(busy_poll: float) -> None:
    """Cooperative cancellation: the same timeout, the caller gets CallTimeout at
    once, and the worker gives the request back and serves on, same process."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, call_timeout=0.5, busy_poll=busy_poll) as pool:
            await pool.wait_ready(1, timeout=READY)
            [old] = pool.worker_pids()
            with pytest.raises(CallTimeout) as info:
                await pool.call("sleep", {"seconds": 30})
            assert info.value.timeout == 0.5 and info.value.pid == old
            answer = await pool.call("ping")  # granted once the drain is over
            assert answer["pid"] == old and pool.worker_pids() == [old]
            assert pool.statistics().restarts == 0
            assert [await pool.call("echo", i) for i in range(5)] == list(range(5))
            pool.check_invariants()


@pytest.mark.layer3
@pytest.mark.parametrize(("busy_poll", "phase"), [
    (0.0, "parked"), (DEFAULT_BUSY_POLL, "parked"),
    (DEFAULT_BUSY_POLL, "spinning"), (MAX_BUSY_POLL, "spinning"),
])
async def test_process_worker_time_out_ends_a_call_in_flight(busy_poll: float,
                                                             phase: str) -> None:
    request = SpawnRequest(worker_id="t-0.1", app=APP, start_timeout=10.0,
                           busy_poll=busy_poll)
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request) as worker:
            worker.time_out(1.0)  # no call in flight: nothing happens
            assert await worker.call("echo", "fine") == "fine"
            assert not worker.dirty
            io = worker._channel._io
            assert isinstance(io, PipeTransport)
            if phase == "spinning":
                # A frozen clock: the reader spins until something stops it.
                # (Its spin is cancel-shielded: should time_out fail to stop it,
                # the clock thaws after many reads so the guard can fire.)
                assert io.busy_poll is not None
                io.busy_poll.clock = frozen_clock(reads=50_000)
                io.busy_poll.typical_wait = 0.0
                # On a busy machine the call above may have lost its CPU while
                # polling; with the clock frozen no pass can look descheduled.
                io.busy_poll.contended = False
            outcome: list[CallTimeout] = []

            async def hang() -> None:
                with pytest.raises(CallTimeout) as info:
                    await worker.call("hang", {})
                outcome.append(info.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                if phase == "parked":
                    await trio.testing.wait_all_tasks_blocked()
                    assert io._waiting_on is not None  # in epoll, waiting for the reply
                else:
                    while not worker._channel.busy:  # no event marks "in flight"
                        await trio.lowlevel.checkpoint()
                    for _ in range(10):
                        await trio.lowlevel.checkpoint()
                    assert io._waiting_on is None  # still polling, not parked
                worker.time_out(1.25)
            assert len(outcome) == 1
            assert outcome[0].timeout == 1.25 and outcome[0].pid == worker.os_pid
            assert worker.dirty


@pytest.mark.layer3
@pytest.mark.parametrize("busy_poll", [BUSY_POLLS[0], BUSY_POLLS[2]])
async def test_process_worker_call_timeout_still_uses_its_own_scope(busy_poll: float) -> None:
    request = SpawnRequest(worker_id="t-0.1", app=APP, start_timeout=10.0,
                           busy_poll=busy_poll)
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request) as worker:
            assert await worker.call("echo", 1, timeout=5.0) == 1
            with pytest.raises(CallTimeout) as info:
                await worker.call("hang", {}, timeout=0.2)
            assert info.value.timeout == 0.2
            assert worker.dirty


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
            assert outcome == [("busy", started), ("timeout", pytest.approx(started + 5.0))]
