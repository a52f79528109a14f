"""The pool over real worker subprocesses: the everyday behaviour (layer 3).

Each test opens a small pool, checks one behaviour of design sections 4, 7 and
8 against real processes, and leaves the block, which must stop and reap every
worker (the autouse leak fixture checks that no child process or fd remains).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
from engine.errors import (
    CallTimeout,
    EngineError,
    LeaseReleased,
    PoolClosed,
    PoolSaturated,
    PoolTimeout,
)
from engine.pool.pool import Pool
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

HANG_GUARD = 20.0  # generous: turns a hang into a failure, never a timing assertion
READY = 10.0


async def pid_of(pool: Pool, **kw: object) -> int:
    answer = await pool.call("ping", **kw)  # type: ignore[arg-type]
    pid = answer["pid"]
    assert isinstance(pid, int)
    return pid


async def test_open_call_close() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            assert await pool.call("echo", {"a": 1}) == {"a": 1}
            pids = pool.worker_pids()
            assert len(pids) == 2 and all(pid_alive(p) for p in pids)
            pool.check_invariants()
        stats = pool.statistics()
        assert stats.closed and stats.stopped == 2 and stats.ready == 0
        # aclose waited for every process: none is left, not even as a zombie.
        assert not any(pid_alive(p) for p in pids)
        with pytest.raises(PoolClosed):
            await pool.call("echo", 1)
        await pool.aclose()  # idempotent


async def test_statistics_fields() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, name=None) as pool:
            await pool.wait_ready(2, timeout=READY)
            stats = pool.statistics()
            assert (stats.size, stats.ready, stats.busy, stats.starting, stats.degraded,
                    stats.stopping, stats.stopped, stats.waiting, stats.sessions,
                    stats.restarts, stats.crashes, stats.start_failures, stats.leases) \
                == (2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            assert stats.breaker == "closed" and stats.closed is False
            async with pool.checkout() as lease:
                held = pool.statistics()
                assert (held.ready, held.busy, held.leases) == (1, 1, 1)
                await lease.call("echo", 1)
            await pool.call("echo", 1, session="s1")
            after = pool.statistics()
            assert (after.ready, after.busy, after.leases, after.sessions) == (2, 0, 0, 1)
            with pytest.raises(AttributeError):
                after.ready = 3  # type: ignore[misc]


async def test_checkout_lease_and_lease_released() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            async with pool.checkout() as lease:
                first = await lease.call("ping")
                second = await lease.call("ping")
                # One lease, one worker, for every call of the block.
                assert first["pid"] == second["pid"] == lease.pid
                assert first["worker_id"] == lease.worker_id
            with pytest.raises(LeaseReleased) as info:
                await lease.call("ping")
            assert isinstance(info.value, trio.ClosedResourceError)
            assert isinstance(info.value, EngineError)
            # The worker went back to the pool unharmed.
            assert pool.statistics().ready == 2
            assert first["pid"] in pool.worker_pids()


async def test_checkout_misused_says_to_write_async_with() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1) as pool:
            await pool.wait_ready(1, timeout=READY)
            with pytest.raises(TypeError, match=r"write `async with pool\.checkout"):
                await pool.checkout()  # type: ignore[misc]
            with pytest.raises(TypeError, match=r"write `async with pool\.checkout"):
                with pool.checkout():  # type: ignore[attr-defined]
                    pass  # pragma: no cover - refused on entry
            block = pool.checkout()
            async with block:
                with pytest.raises(RuntimeError, match="entered already"):
                    async with block:
                        pass  # pragma: no cover - refused on entry
            # None of it reserved a worker for good.
            assert pool.statistics().ready == 1
            assert await pool.call("echo", 1) == 1


async def test_eager_start_spawns_every_worker_at_once() -> None:
    with trio.fail_after(HANG_GUARD):
        with telemetry.capture([("engine", "worker")]) as seen:
            async with engine.open_pool(size=4) as pool:
                await pool.wait_ready(4, timeout=READY)
                stats = pool.statistics()
                assert (stats.ready, stats.starting, stats.restarts) == (4, 0, 0)
                assert len(set(pool.worker_pids())) == 4
        names = [e.event[2] for e in seen if pool.label == e.metadata.get("pool", pool.label)]
        spawns = [i for i, n in enumerate(names) if n == "spawn"]
        readies = [i for i, n in enumerate(names) if n == "ready"]
        assert len(spawns) == 4 and len(readies) == 4
        # Concurrent, not one after the other: every spawn came before any hello.
        assert max(spawns) < min(readies)


async def test_lazy_pool_starts_nothing_until_the_first_call() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=3, lazy=True) as pool:
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            stats = pool.statistics()
            assert (stats.ready, stats.starting, stats.stopped) == (0, 0, 3)
            assert pool.worker_pids() == []
            assert await pool.call("echo", "x") == "x"
            stats = pool.statistics()
            # One waiter: one worker started, not three.
            assert stats.ready == 1 and stats.stopped == 2
            assert len(pool.worker_pids()) == 1


async def test_sequential_anonymous_calls_prefer_the_most_recent_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=4) as pool:
            await pool.wait_ready(4, timeout=READY)
            pids = {await pid_of(pool) for _ in range(6)}
            assert len(pids) == 1


async def test_pool_timeout_when_all_workers_are_held() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            async with pool.checkout(), pool.checkout():
                with pytest.raises(PoolTimeout) as info:
                    await pool.call("echo", 1, checkout_timeout=0.2)
                assert not isinstance(info.value, CallTimeout)
                assert info.value.timeout == pytest.approx(0.2)
                with pytest.raises(PoolTimeout):
                    async with pool.checkout(timeout=0.1):
                        pytest.fail("no worker is free")
                assert pool.statistics().waiting == 0
            # Both workers come back and serve again.
            assert await pool.call("echo", 2) == 2
            pool.check_invariants()


async def test_pool_saturated_beyond_max_waiters() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, max_waiters=2) as pool:
            await pool.wait_ready(1, timeout=READY)
            served: list[object] = []

            async def waiter(i: int) -> None:
                served.append(await pool.call("echo", i, checkout_timeout=10))

            async with trio.open_nursery() as nursery:
                async with pool.checkout():
                    nursery.start_soon(waiter, 1)
                    nursery.start_soon(waiter, 2)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                    assert pool.statistics().waiting == 2
                    with pytest.raises(PoolSaturated) as info:
                        await pool.call("echo", 3)
                    assert info.value.max_waiters == 2
            # The two waiters were served once the lease came back.
            assert sorted(served) == [1, 2]  # type: ignore[type-var]


async def test_call_timeout_replaces_the_worker_with_cancel_grace_0() -> None:
    """cancel_grace=0: the behaviour before cooperative cancellation (a timed-out
    worker is killed at once). tests/pool/test_cancellation.py has the rest."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, call_timeout=0.3, cancel_grace=0) as pool:
            await pool.wait_ready(1, timeout=READY)
            old = await pid_of(pool)
            with pytest.raises(CallTimeout) as info:
                await pool.call("hang", {})
            assert not isinstance(info.value, PoolTimeout)
            assert info.value.pid == old
            # The next call waits for the replacement (no sleep needed).
            new = await pid_of(pool)
            assert new != old
            assert pool.statistics().restarts == 1
            assert not pid_alive(old)
            # An explicit per-call timeout works the same way.
            with pytest.raises(CallTimeout):
                await pool.call("sleep", {"seconds": 30}, timeout=0.2)
            assert await pid_of(pool) not in (old, new)
            assert pool.statistics().restarts == 2


async def test_cancelled_in_flight_call_replaces_the_worker_with_cancel_grace_0() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, cancel_grace=0) as pool:
            await pool.wait_ready(1, timeout=READY)
            old = await pid_of(pool)
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await pool.call("sleep", {"seconds": 30})

                nursery.start_soon(caller)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert pool.statistics().busy == 1
                scope.cancel()
            assert scope.cancelled_caught
            new = await pid_of(pool)
            assert new != old and pool.statistics().restarts == 1


async def test_cancel_before_the_write_keeps_the_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1) as pool:
            await pool.wait_ready(1, timeout=READY)
            old = await pid_of(pool)
            with trio.CancelScope() as scope:
                async with pool.checkout() as lease:
                    scope.cancel()
                    await lease.call("echo", "never sent")
            assert scope.cancelled_caught
            # Cancelled while queued for a worker: nothing was written either.
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.call("echo", "never sent")
            assert await pid_of(pool) == old
            stats = pool.statistics()
            assert stats.restarts == 0 and stats.ready == 1


async def test_shutdown_cancels_leases_after_grace_and_reaps_everything() -> None:
    outcomes: list[BaseException] = []
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            async with engine.open_pool(size=2, shutdown_grace=0.3) as pool:
                await pool.wait_ready(2, timeout=READY)
                pids = pool.worker_pids()
                holding = trio.Event()

                async def holder() -> None:
                    try:
                        async with pool.checkout() as lease:
                            holding.set()
                            await lease.call("sleep", {"seconds": 30})
                    except PoolClosed as exc:
                        outcomes.append(exc)
                        with pytest.raises(PoolClosed):
                            await lease.call("echo", 1)

                nursery.start_soon(holder)
                await holding.wait()
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            # Leaving the block closed the pool: the lease got PoolClosed.
            assert len(outcomes) == 1 and isinstance(outcomes[0], PoolClosed)
    assert len(pids) == 2
    assert not any(pid_alive(p) for p in pids)
    stats = pool.statistics()
    assert stats.closed and stats.stopped == 2 and stats.leases == 0


async def test_close_while_a_waiter_is_queued_gives_pool_closed() -> None:
    errors: list[BaseException] = []
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            async with engine.open_pool(size=1, shutdown_grace=0.2) as pool:
                await pool.wait_ready(1, timeout=READY)

                async def queued() -> None:
                    try:
                        await pool.call("echo", 1, checkout_timeout=30)
                    except PoolClosed as exc:
                        errors.append(exc)

                async with pool.checkout():
                    nursery.start_soon(queued)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                    assert pool.statistics().waiting == 1
                    await pool.aclose()
                assert len(errors) == 1


async def test_close_while_workers_are_starting() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app="tests.apps.slow_start", size=2,
                                    start_timeout=30) as pool:
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert pool.statistics().starting == 2
    # The abandoned starts were killed and reaped (the leak fixture checks too).
    stats = pool.statistics()
    assert stats.stopped == 2 and stats.start_failures == 0


async def test_cancelling_the_scope_around_the_pool_reaps_every_worker() -> None:
    with trio.fail_after(HANG_GUARD), trio.CancelScope() as scope:
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            pids = pool.worker_pids()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert len(pids) == 2 and not any(pid_alive(p) for p in pids)
