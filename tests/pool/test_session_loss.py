"""Layer 2: a session's loss is reported once, and a worker's death is no one's error.

Over fake workers, whose ``kill()`` makes ``is_alive()`` false at once while the
slot task only notices the death at its next checkpoint: exactly the window
between a death and its detection that a real SIGKILL opens.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import engine
from engine.errors import CallTimeout, SessionLost, WorkerCrashed
from engine.pool.pool import Pool
from engine.testing.fakes import FakeWorker, FakeWorkerFactory, Script

pytestmark = pytest.mark.layer2

HANG_GUARD = 10.0
PROGRAM = {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"}


async def bound_worker(pool: Pool, factory: FakeWorkerFactory, session: str) -> FakeWorker:
    await pool.call("create_program", PROGRAM, session=session)
    return factory.worker(pool.inspect().bindings[session].worker_id or "")


async def programs(pool: Pool, session: str) -> int:
    count = (await pool.call("list_programs", {}, session=session))["total_count"]
    assert isinstance(count, int)
    return count


async def test_a_death_during_a_session_call_is_session_lost_once() -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory) as pool:
            await pool.wait_ready(2)
            victim = await bound_worker(pool, factory, "s")
            caught: list[BaseException] = []

            async def call_in_flight() -> None:
                try:
                    await pool.call("hang", {}, session="s")
                except SessionLost as exc:
                    caught.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_in_flight)
                await trio.testing.wait_all_tasks_blocked()  # its request is written
                victim.kill()
            [lost] = caught
            assert isinstance(lost, SessionLost) and lost.session == "s"
            # The crash that cost the state is its cause, not a separate report.
            assert isinstance(lost.__cause__, WorkerCrashed)
            # Reported once: the next call starts a fresh session state...
            assert await programs(pool, "s") == 0
            # ... and so do the ones after it, once the death is noticed.
            await pool.wait_until(lambda view: victim.worker_id not in
                                  {slot.worker_id for slot in view.slots})
            assert await programs(pool, "s") == 0
            pool.check_invariants()


async def test_a_death_noticed_only_at_hand_off_is_session_lost_once() -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory) as pool:
            await pool.wait_ready(2)
            victim = await bound_worker(pool, factory, "s")
            victim.kill()  # the slot task has not run since: the pool thinks it READY
            with pytest.raises(SessionLost):
                await pool.call("list_programs", {}, session="s")
            assert await programs(pool, "s") == 0
            assert await programs(pool, "s") == 0


async def test_end_session_right_after_its_worker_died_returns_normally() -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory) as pool:
            await pool.wait_ready(2)
            victim = await bound_worker(pool, factory, "s")
            victim.kill()
            # The caller wanted the state gone, and it is: no error, no live state.
            assert await pool.end_session("s") is False
            assert "s" not in pool.inspect().bindings
            assert await programs(pool, "s") == 0  # a fresh session, no SessionLost
            pool.check_invariants()


async def test_end_session_whose_cleanup_finds_its_worker_dead_returns_normally() -> None:
    # The death is found by the cleanup call itself (the worker dies under it).
    factory = FakeWorkerFactory(Script(faults={"cleanup_session": "crash"}))
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory) as pool:
            await pool.wait_ready(2)
            await bound_worker(pool, factory, "s")
            assert await pool.end_session("s") is False
            assert "s" not in pool.inspect().bindings
            pool.check_invariants()


async def test_wait_ready_right_after_a_kill_does_not_count_the_dead_worker() -> None:
    factory = FakeWorkerFactory(Script(start_delay=0.5))
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory) as pool:
            await pool.wait_ready(2)
            victim = factory.workers[0]
            victim.kill()  # not yet noticed: the core still counts it ready
            await pool.wait_ready(2)
            workers = [row.worker for row in pool.inspect().slots]
            assert all(w is not None and w.is_alive() for w in workers), workers
            assert victim not in workers


async def test_hint_affinity_reports_a_dead_session_worker_at_once() -> None:
    # "hint" may run a session elsewhere when its worker is busy, but a dead
    # worker's state is gone: the call that finds it says so, not the next one.
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, worker_factory=factory, affinity="hint") as pool:
            await pool.wait_ready(2)
            victim = await bound_worker(pool, factory, "s")
            victim.kill()
            with pytest.raises(SessionLost):
                await pool.call("list_programs", {}, session="s")
            assert await programs(pool, "s") == 0
            await pool.wait_until(lambda view: victim.worker_id not in
                                  {slot.worker_id for slot in view.slots})
            assert await programs(pool, "s") == 0  # not reported twice
            pool.check_invariants()


async def test_a_timeout_that_kills_the_session_worker_is_session_lost_once() -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        # cancel_grace=0: a timed-out call's worker is killed, and its sessions with it.
        async with engine.open_pool(size=1, worker_factory=factory, cancel_grace=0) as pool:
            await pool.wait_ready(1)
            await bound_worker(pool, factory, "s")
            with pytest.raises(SessionLost) as info:
                await pool.call("sleep", {"seconds": 5}, session="s", timeout=0.05)
            assert isinstance(info.value.__cause__, CallTimeout)
            assert await programs(pool, "s") == 0


async def test_a_timeout_the_worker_gives_back_keeps_the_session() -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(HANG_GUARD):
        # Cooperative cancellation: the worker is drained, its sessions live on.
        async with engine.open_pool(size=1, worker_factory=factory, cancel_grace=1.0) as pool:
            await pool.wait_ready(1)
            await bound_worker(pool, factory, "s")
            with pytest.raises(CallTimeout):
                await pool.call("sleep", {"seconds": 5}, session="s", timeout=0.05)
            assert await programs(pool, "s") == 1
