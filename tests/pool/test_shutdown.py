"""Shutdown: ``aclose()`` can be cancelled at any point and leaving ``open_pool``
still ends within ``shutdown_grace`` plus the time to stop the workers, with no
process left (issue 20).

* Layer 2: fake workers under an autojump ``MockClock``: the bounds are checked
  exactly, in virtual seconds.
* Layer 3: the same scenario with real worker subprocesses.

Every test runs under a hang guard (``trio.fail_after``). The exit of
``open_pool`` waits for the shutdown under a shield (the workers must be
stopped whatever happens), which a guard can't interrupt; the suite's time
limit (tests/time_limit.py) then ends the test, and the guard's bound is
asserted explicitly.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import engine
from engine.errors import PoolClosed
from engine.testing.fakes import FakeWorkerFactory, Script
from tests.leaks import pid_alive

GRACE = 5.0
FAKE_STOP_GRACE = 0.5  # how long a fake worker gets to answer its shutdown
VIRTUAL_GUARD = 1000.0  # virtual seconds
HANG_GUARD = 30.0  # real seconds, generous: a hang fails, a slow machine does not
READY = 10.0

# A regression hangs in a shielded wait: let the suite's time limit end it soon.
pytestmark = pytest.mark.timeout(60)


@pytest.mark.layer2
@pytest.mark.parametrize("cancel_after", [0.0, 0.2, GRACE - 0.1])
async def test_a_cancelled_aclose_does_not_hang_the_exit_of_open_pool(
        cancel_after: float, autojump_clock: trio.testing.MockClock) -> None:
    # The scenario of issue 20: a lease is still held, shutdown_grace is longer
    # than the caller is willing to wait, and aclose() is cancelled part-way.
    # Leaving open_pool used to wait forever for a close that never finished.
    factory = FakeWorkerFactory(Script(), grace=FAKE_STOP_GRACE)
    outcome: list[BaseException] = []
    with trio.fail_after(VIRTUAL_GUARD):
        async with trio.open_nursery() as nursery:
            async with engine.open_pool(worker_factory=factory, size=2,
                                        shutdown_grace=GRACE) as pool:
                await pool.wait_ready()

                async def holder() -> None:
                    async with pool.checkout() as lease:
                        try:
                            await lease.call("sleep", {"seconds": 600})
                        except PoolClosed as exc:  # killed after shutdown_grace
                            outcome.append(exc)

                nursery.start_soon(holder)
                await trio.testing.wait_all_tasks_blocked()
                closing_at = trio.current_time()
                with trio.move_on_after(cancel_after) as gave_up:
                    await pool.aclose()
                assert gave_up.cancelled_caught
                assert pool.closed
                with pytest.raises(PoolClosed):
                    await pool.call("echo", 1)
            left_at = trio.current_time()
    assert left_at - closing_at <= GRACE + FAKE_STOP_GRACE
    assert left_at - closing_at >= GRACE  # the lease had its grace
    assert len(outcome) == 1
    # It says the pool closed during this call, not "open a new pool" (second
    # new-user audit: the call was made while the pool was open).
    assert str(outcome[0]).startswith(f"pool {pool.label} closed while 'sleep' ran: its "
                                      "worker was stopped once the pool's shutdown_grace")
    assert not factory.unreaped and not factory.alive
    stats = pool.statistics()
    assert stats.closed and stats.stopped == 2 and stats.leases == 0


@pytest.mark.layer2
async def test_an_aclose_cancelled_at_once_is_finished_by_the_next_call(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script(), grace=FAKE_STOP_GRACE)
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=3,
                                    shutdown_grace=GRACE) as pool:
            await pool.wait_ready()
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.aclose()  # cancelled before it could wait at all
            assert pool.closed
            await pool.aclose()  # waits for the same shutdown, to its end
            assert not factory.unreaped
            assert pool.statistics().stopped == 3
            # The body goes on: closing the pool cancels nothing of the caller's.
            await trio.sleep(1)
            await pool.aclose()  # idempotent


@pytest.mark.layer2
async def test_waiters_on_the_pool_wake_when_it_closes(
        autojump_clock: trio.testing.MockClock) -> None:
    # No waiter can wait forever on a pool that is closing: wait_ready for
    # workers that never come, and a queued checkout.
    factory = FakeWorkerFactory(Script(start_delay=500.0), grace=FAKE_STOP_GRACE)
    errors: list[BaseException] = []
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=1, start_timeout=1000,
                                    checkout_timeout=900) as pool:
            async def waits_for(what: str) -> None:
                try:
                    if what == "ready":
                        await pool.wait_ready(timeout=900)
                    else:
                        await pool.call("echo", 1)
                except PoolClosed as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waits_for, "ready")
                nursery.start_soon(waits_for, "call")
                await trio.testing.wait_all_tasks_blocked()
                closing_at = trio.current_time()
                await pool.aclose()
            assert trio.current_time() == closing_at  # nobody waited for a deadline
    assert len(errors) == 2
    assert not factory.unreaped


@pytest.mark.layer3
async def test_a_cancelled_aclose_does_not_hang_the_exit_of_a_real_pool() -> None:
    grace = 1.0
    outcome: list[BaseException] = []
    with trio.fail_after(grace + HANG_GUARD):
        async with trio.open_nursery() as nursery:
            async with engine.open_pool(size=2, shutdown_grace=grace) as pool:
                await pool.wait_ready(2, timeout=READY)
                pids = pool.worker_pids()
                holding = trio.Event()

                async def holder() -> None:
                    async with pool.checkout() as lease:
                        holding.set()
                        try:
                            await lease.call("sleep", {"seconds": 60})
                        except PoolClosed as exc:
                            outcome.append(exc)

                nursery.start_soon(holder)
                await holding.wait()
                with trio.move_on_after(0.2) as gave_up:
                    await pool.aclose()
                assert gave_up.cancelled_caught and pool.closed
    # Left within the bound (the guard), the lease revoked, every process reaped.
    assert len(outcome) == 1
    assert len(pids) == 2 and not any(pid_alive(p) for p in pids)
    assert pool.statistics().stopped == 2
