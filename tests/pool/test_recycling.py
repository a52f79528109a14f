"""Layer 3: recycling by memory and idleness, and the worker snapshot (issue 4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import trio

import engine
from engine import telemetry
from engine.errors import SessionLost
from engine.pool.lifecycle import WorkerState

pytestmark = pytest.mark.layer3


class ExitWatch:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.changed = trio.Event()

    def __call__(self, event: tuple[str, ...], measurements: Mapping[str, float],
                 metadata: Mapping[str, Any]) -> None:
        self.reasons.append(str(metadata.get("reason")))
        self.changed.set()

    async def wait_for(self, fragment: str) -> None:
        while not any(fragment in r for r in self.reasons):
            self.changed = trio.Event()
            await self.changed.wait()


async def test_worker_above_max_rss_is_retired_and_its_session_lost() -> None:
    watch = ExitWatch()
    telemetry.attach("test-rss", [("engine", "worker", "exit")], watch)
    try:
        async with engine.open_pool(size=1, max_rss_mb=80, health_interval=0.1,
                                    health_timeout=2.0) as pool:
            await pool.wait_ready(1, timeout=20)
            first = await pool.call("ping", session="big")
            await pool.call("alloc", {"mb": 120}, session="big")
            with trio.fail_after(20):
                await watch.wait_for("max_rss_mb")
            await pool.wait_ready(1, timeout=20)
            with pytest.raises(SessionLost):
                await pool.call("ping", session="big")
            assert (await pool.call("ping", session="big"))["pid"] != first["pid"]
    finally:
        telemetry.detach("test-rss")


async def test_idle_workers_shrink_to_min_size_and_grow_on_demand() -> None:
    watch = ExitWatch()
    telemetry.attach("test-idle", [("engine", "worker", "exit")], watch)
    try:
        async with engine.open_pool(size=3, min_size=1, idle_retire=0.2) as pool:
            await pool.wait_ready(3, timeout=20)
            with trio.fail_after(20):
                while sum("idle for" in r for r in watch.reasons) < 2:
                    watch.changed = trio.Event()
                    await watch.changed.wait()
            stats = pool.statistics()
            assert stats.ready + stats.busy == 1 and stats.stopped == 2

            # Three concurrent callers holding leases need three workers again.
            held = trio.Event()
            leased = 0
            all_in = trio.Event()

            async def hold() -> None:
                nonlocal leased
                async with pool.checkout(timeout=20) as lease:
                    await lease.call("ping")
                    leased += 1
                    if leased == 3:
                        all_in.set()
                    await held.wait()

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(hold)
                with trio.fail_after(20):
                    await all_in.wait()
                assert pool.statistics().busy == 3
                held.set()
    finally:
        telemetry.detach("test-idle")


async def test_slot_snapshots_have_bounded_history() -> None:
    async with engine.open_pool(size=2) as pool:
        await pool.wait_ready(2, timeout=20)
        for _ in range(50):
            await pool.call("ping")
        snapshot = pool.inspect().slots
        assert [slot.index for slot in snapshot] == [0, 1]
        for slot in snapshot:
            assert slot.state is WorkerState.READY and slot.pid is not None
            assert 0 < len(slot.history) <= 32
            assert slot.history[0].new.value in ("starting", "ready", "busy")
            for a, b in zip(slot.history, list(slot.history)[1:], strict=False):
                assert a.new is b.old and b.at >= a.at
