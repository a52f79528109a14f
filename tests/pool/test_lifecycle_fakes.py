"""Layer 2: session TTL, health and sessions over fake workers under a MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
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
    with trio.fail_after(1000):  # virtual seconds: a hang fails
        async with engine.open_pool(size=1, worker_factory=factory,
                                    shutdown_grace=0.1) as pool:
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


async def test_a_worker_whose_health_probe_timed_out_is_replaced_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    # Found while testing telemetry: a probe that times out leaves the channel
    # dirty (the reply may still come), so the worker can never answer again;
    # it used to stay DEGRADED and be probed, failing "channel unusable", up to
    # max_health_failures times before it was replaced.
    factory = FakeWorkerFactory(Script())
    factory.plan.append(Script(faults={"health": "hang"}))  # the first worker
    with telemetry.capture([telemetry.HEALTH_FAILED]) as failures, trio.fail_after(1000):
        async with engine.open_pool(size=1, worker_factory=factory, health_interval=1.0,
                                    health_timeout=0.5, max_health_failures=3) as pool:
            await pool.wait_ready(1)
            victim = factory.workers[0]
            # The first probe starts at t=1 and times out at t=1.5.
            await victim.wait_exited()
            assert trio.current_time() == pytest.approx(1.5)
            await pool.wait_ready(1)
            assert await pool.call("echo", "served") == "served"
            replaced_at = trio.current_time()
            history = pool.inspect().slots[0].history
    reported = [e for e in failures if e.metadata["worker_id"] == victim.worker_id]
    assert [e.metadata["failures"] for e in reported] == [1]
    assert "health_timeout=0.5" in str(reported[0].metadata["reason"])
    assert replaced_at == pytest.approx(1.5)  # replaced at once, no backoff
    assert pool.statistics().restarts == 1
    assert any("can't be used again" in t.reason for t in history), history


async def test_a_worker_hung_right_after_a_call_is_out_of_service_within_the_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    # The worst case for the default health checks: a worker used just after
    # the health loop looked at it, then frozen. It must still be probed
    # health_interval after that call (not a whole interval later) and be out
    # of service health_timeout after the probe.
    config = engine.PoolConfig()
    assert config.health_interval is not None
    bound = config.health_interval + config.health_timeout
    factory = FakeWorkerFactory(Script())
    failed = trio.Event()
    failed_at = 0.0

    def on_failed(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal failed_at
        if not failed.is_set():
            failed_at = trio.current_time()
            failed.set()

    async with engine.open_pool(size=2, worker_factory=factory) as pool:
        await pool.wait_ready(2)
        # Just past the first round of probes (every worker probed once).
        await trio.sleep(config.health_interval * 1.05)
        async with pool.checkout() as first, pool.checkout() as second:
            assert await first.call("echo", 1) == 1
            assert await second.call("echo", 2) == 2
            victim = factory.worker(first.worker_id)
        victim._peer.script = victim.script.evolve(reply_mode="hang")
        frozen_at = trio.current_time()
        telemetry.attach("test-hung", [telemetry.HEALTH_FAILED], on_failed)
        try:
            with trio.fail_after(10 * bound):
                await failed.wait()
        finally:
            telemetry.detach("test-hung")
        assert failed_at - frozen_at <= bound * 1.01
        await pool.wait_ready(2)
        assert not victim.is_alive()
        assert await pool.call("echo", "still served") == "still served"
