"""Supervision over fake workers (layer 2, virtual time): when a slot restarts
its worker at once and when it backs off.

Backoff is for crash loops: failed starts, and workers that died or were
removed as unfit before serving anyone. A worker that served and was then
removed, or one retired for recycling, is replaced at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.errors import PoolTimeout
from engine.pool.contract import CheckinOutcome, CheckoutRequest, Ok, Remove, WorkerInfo
from engine.process.handle import SpawnRequest
from engine.testing.fakes import FakeWorker, FakeWorkerFactory, Script

pytestmark = pytest.mark.layer2

VIRTUAL_GUARD = 1000.0  # virtual seconds


class CountingFactory:
    """Fake workers, counting starts; past ``limit`` starts it cancels ``storm``:
    a restart loop that never lets virtual time pass can't hang the test."""

    def __init__(self, limit: int) -> None:
        self.fakes = FakeWorkerFactory(Script())
        self.limit = limit
        self.started_at: list[float] = []
        self.ready_at: list[float] = []
        self.storm = trio.CancelScope()

    @asynccontextmanager
    async def __call__(self, request: SpawnRequest) -> AsyncIterator[FakeWorker]:
        self.started_at.append(trio.current_time())
        if len(self.started_at) > self.limit:
            self.storm.cancel()
        async with self.fakes(request) as worker:
            self.ready_at.append(trio.current_time())
            yield worker


class RefuseEveryWorker:
    """A checkout policy that never hands a worker over."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
        self.asked += 1
        return self.answer

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any:
        return Ok()


@pytest.mark.parametrize("answer", [Remove("never this one"), "garbage"],
                         ids=["remove", "contract-violation"])
async def test_a_policy_that_removes_every_worker_meets_backoff_not_a_spawn_storm(
        answer: Any, autojump_clock: trio.testing.MockClock) -> None:
    # Found while testing telemetry: the removed workers had never served, yet
    # each was replaced at once, so the slot spawned in a tight loop (under
    # autojump, virtual time never advanced and the waiter never timed out).
    factory = CountingFactory(limit=200)
    policy = RefuseEveryWorker(answer)
    with trio.fail_after(VIRTUAL_GUARD):
        with factory.storm:
            async with engine.open_pool(worker_factory=factory, size=1, policy=policy,
                                        checkout_timeout=5.0, seed=1) as pool:
                await pool.wait_ready()
                started = trio.current_time()
                with pytest.raises(PoolTimeout) as info:
                    await pool.call("echo", 1)
                waited = trio.current_time() - started
        assert not factory.storm.cancelled_caught, \
            f"{len(factory.started_at)} spawns and no virtual time passed: no backoff"
    assert waited == pytest.approx(5.0)
    reason = info.value.reason
    assert "the checkout policy removed every worker offered" in reason
    assert ("never this one" if isinstance(answer, Remove) else "'garbage'") in reason
    # Restarts are paced: the first at once, then exponentially spaced (and the
    # intensity limit's cooldown): a handful, spread over the checkout timeout.
    starts = [t - started for t in factory.started_at if t >= started]
    assert 3 <= len(starts) <= 20, starts
    assert starts[-1] - starts[0] > 0.5, starts


class RemoveAfterServing:
    """Removes every worker at checkin, after it served its caller."""

    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
        return Ok()

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any:
        return Remove("served once is enough")


@pytest.mark.parametrize("config", [{"policy": RemoveAfterServing()},
                                    {"max_calls_per_worker": 1}],
                         ids=["removed-after-serving", "recycled"])
async def test_a_worker_removed_after_serving_or_recycled_is_replaced_at_once(
        config: dict[str, Any], autojump_clock: trio.testing.MockClock) -> None:
    factory = CountingFactory(limit=200)
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=1, **config) as pool:
            await pool.wait_ready()
            for i in range(6):
                assert await pool.call("echo", i) == i
                await pool.wait_ready()
    # Six workers served one call each, and no time passed between them.
    assert len(factory.started_at) == 7
    assert factory.started_at[-1] == factory.started_at[0]
