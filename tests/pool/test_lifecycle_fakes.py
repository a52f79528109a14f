"""Layer 2: session TTL, health and sessions over fake workers under a MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.errors import SessionLost
from engine.testing.fakes import FakeContext, FakeWorkerFactory, Script

pytestmark = pytest.mark.layer2


async def test_idle_session_expires_and_its_worker_gets_cleanup(
        autojump_clock: trio.testing.MockClock) -> None:
    cleaned: list[tuple[str, Any]] = []

    async def record_cleanup(ctx: FakeContext, args: Any) -> Any:
        cleaned.append((ctx.worker.worker_id, args))
        return {"removed": True}

    factory = FakeWorkerFactory(Script(handlers={"cleanup_session": record_cleanup}))
    async with engine.open_pool(size=2, worker_factory=factory, session_ttl=10.0) as pool:
        await pool.wait_ready(2)
        await pool.call("echo", {"x": 1}, session="short-lived")
        bound = pool.inspect().bindings["short-lived"].worker_id
        await trio.sleep(5)
        await pool.call("echo", {"x": 2}, session="short-lived")  # still bound: refreshes
        assert "short-lived" in pool.inspect().bindings
        assert cleaned == []
        await trio.sleep(30)
        assert "short-lived" not in pool.inspect().bindings
        assert cleaned == [(bound, {"session": "short-lived"})]
        assert pool.statistics().sessions == 0


async def test_hung_fake_worker_is_replaced_by_health_checks(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with engine.open_pool(size=2, worker_factory=factory, health_interval=1.0,
                                health_timeout=0.5, max_health_failures=2) as pool:
        await pool.wait_ready(2)
        victim = factory.workers[0]
        # From now on this worker never answers (like `hang`, but for everything).
        victim._peer.script = victim.script.evolve(reply_mode="hang")
        await trio.sleep(10)
        assert not victim.is_alive()
        assert pool.statistics().restarts >= 1
        assert len(factory.alive) == 2
        assert await pool.call("echo", "still served") == "still served"


async def test_session_lost_once_when_its_fake_worker_dies(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with engine.open_pool(size=2, worker_factory=factory) as pool:
        await pool.wait_ready(2)
        await pool.call("create_program", {"id": "p", "signature": {"inputs": ["a"],
                        "outputs": ["b"]}, "handler": "echo"}, session="s")
        bound = factory.worker(pool.inspect().bindings["s"].worker_id or "")
        bound.kill()
        await pool.wait_ready(2)
        with pytest.raises(SessionLost):
            await pool.call("list_programs", {}, session="s")
        listing = await pool.call("list_programs", {}, session="s")
        assert listing["total_count"] == 0


async def test_shutdown_kill_of_a_held_lease_is_not_a_crash(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    async with engine.open_pool(size=1, worker_factory=factory, shutdown_grace=0.1) as pool:
        await pool.wait_ready(1)
        async with trio.open_nursery() as nursery:
            async def hold() -> None:
                async with pool.checkout() as lease:
                    with pytest.raises(engine.PoolClosed):
                        await lease.call("sleep", {"seconds": 60})
            nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            await pool.aclose()
    assert pool.statistics().crashes == 0
    assert not any(w.is_alive() for w in factory.workers)
