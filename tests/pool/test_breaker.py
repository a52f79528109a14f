"""Layer 3: the pool-wide circuit breaker with real workers (issue 5)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import trio

import engine
from engine import telemetry
from engine.errors import AppStartFailed

pytestmark = pytest.mark.layer3


class BreakerWatch:
    """Wakes a waiter on each breaker transition (event-driven, no polling)."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.changed = trio.Event()

    def __call__(self, event: tuple[str, ...], measurements: Mapping[str, float],
                 metadata: Mapping[str, Any]) -> None:
        new = metadata["new"]
        self.states.append(getattr(new, "value", new))
        self.changed.set()

    async def next_change(self) -> None:
        self.changed = trio.Event()
        await self.changed.wait()

    async def wait_for(self, state: str) -> None:
        while state not in self.states:
            self.changed = trio.Event()
            await self.changed.wait()


@pytest.fixture
def breaker_watch() -> Iterator[BreakerWatch]:
    watch = BreakerWatch()
    telemetry.attach("test-breaker", [("engine", "breaker", "transition")], watch)
    yield watch
    telemetry.detach("test-breaker")


async def test_broken_app_opens_breaker_and_fixed_app_closes_it(
        monkeypatch: pytest.MonkeyPatch, breaker_watch: BreakerWatch) -> None:
    monkeypatch.setenv("ENGINE_TEST_APP_BROKEN", "1")
    async with engine.open_pool(
        app="tests.apps.env_broken", size=2, restart_backoff=(0.02, 0.1, 1.0),
        max_restarts=1000, breaker_threshold=3, breaker_window=30.0, breaker_reset=0.3,
        checkout_timeout=5.0,
    ) as pool:
        with trio.fail_after(30):
            await breaker_watch.wait_for("open")
        assert pool.statistics().breaker == "open"
        assert pool.statistics().start_failures >= 3
        # Fail fast, with the cause: no worker starts (the breaker opened for it).
        with pytest.raises(AppStartFailed) as denied:
            await pool.call("hello", checkout_timeout=60)
        assert str(denied.value).startswith(
            "RuntimeError: app is broken: ENGINE_TEST_APP_BROKEN=1")

        monkeypatch.delenv("ENGINE_TEST_APP_BROKEN")
        with trio.fail_after(30):
            # Both slots come back with the fixed app; the breaker's own timer
            # then moves it to half-open (if a fresh start has not closed it yet).
            # (wait_until, not wait_ready: that one fails at once while no
            # worker can start, and the last starts here failed.)
            await pool.wait_until(lambda view: len(view.live_workers()) >= 2)
            while pool.statistics().breaker == "open":
                await breaker_watch.next_change()
        # The first checkout is the half-open probe; it succeeds and closes it.
        assert await pool.call("hello") == "fixed"
        assert pool.statistics().breaker == "closed"
    assert "half_open" in breaker_watch.states


async def test_one_failing_slot_does_not_open_the_breaker(
        breaker_watch: BreakerWatch) -> None:
    # Default threshold is size + 1 consecutive start failures: a healthy pool
    # whose worker crashes now and then never trips it.
    async with engine.open_pool(size=2, restart_backoff=(0.01, 0.05, 1.0)) as pool:
        await pool.wait_ready(2, timeout=20)
        for code in (3, 4, 5):
            with pytest.raises(engine.WorkerCrashed):
                await pool.call("crash", {"code": code})
            await pool.wait_ready(2, timeout=20)
        assert pool.statistics().breaker == "closed"
        assert pool.statistics().crashes == 3
    assert breaker_watch.states == []
