"""Cooperative cancellation: cancel to worker ready again, against cancel to
replacement ready (issue 13).

Two pools of one real worker, in interleaved rounds (one sample of each per
round, so a noisy moment hits both): in each, a caller starts a long
``sleep``, and a few milliseconds later (time for the handler to start: this
is a measurement, not a test) the caller is cancelled. The clock runs from
the cancel to the pool's telemetry saying a worker is ready to serve again:

* ``cancel_grace=1`` (the default): the transition draining -> ready, the same
  process, every session kept;
* ``cancel_grace=0`` (kill at once, the old behaviour): the replacement's
  ``engine.worker.ready`` (kill, reap, spawn, import, hello).

The ratio says how much sooner a cancelled call's worker serves again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

import engine
from bench.common import median
from engine import telemetry
from engine.pool.pool import Pool

_HANDLER_START = 0.005  # seconds for the worker to be inside its handler


class _ReadyWatch:
    """perf_counter() of the next moment a worker of the pool is ready again."""

    def __init__(self) -> None:
        self.label = ""
        self.event = trio.Event()
        self.at = 0.0

    def arm(self, label: str) -> None:
        self.label = label
        self.event = trio.Event()

    def handle(self, event: Any, measurements: Any, metadata: Any) -> None:
        if metadata.get("pool") != self.label or self.event.is_set():
            return
        drained = event == telemetry.WORKER_TRANSITION and metadata.get("old") == "draining" \
            and metadata.get("new") == "ready"
        if drained or event == telemetry.WORKER_READY:
            self.at = time.perf_counter()
            self.event.set()


async def _one(pool: Pool, watch: _ReadyWatch) -> float:
    """Cancel a call mid-way; seconds from the cancel to a worker ready again."""
    await pool.call("ping")  # the worker is ready and warm
    watch.arm(pool.label)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def caller() -> None:
            with scope:
                await pool.call("sleep", {"seconds": 30})

        nursery.start_soon(caller)
        await trio.sleep(_HANDLER_START)
        cancelled = time.perf_counter()
        scope.cancel()
    with trio.fail_after(30):
        await watch.event.wait()
    return watch.at - cancelled


async def rounds(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cooperative": [], "kill": []}
    watch = _ReadyWatch()
    telemetry.attach("bench-cancel", [telemetry.WORKER_TRANSITION, telemetry.WORKER_READY],
                     watch.handle)
    try:
        # max_restarts: one kill per round would otherwise trip the restart
        # intensity of the killing pool and measure its cooldown.
        async with engine.open_pool(size=1, healthy_period=0.01) as cooperative, \
                engine.open_pool(size=1, cancel_grace=0, healthy_period=0.01,
                                 max_restarts=1_000_000) as killing:
            await cooperative.wait_ready(1, timeout=30)
            await killing.wait_ready(1, timeout=30)
            for i in range(n + 2):
                a = await _one(cooperative, watch)
                await trio.sleep(0.02)  # the killing pool's worker counts as healthy
                b = await _one(killing, watch)
                if i >= 2:  # the first rounds pay for a cold page cache
                    out["cooperative"].append(a)
                    out["kill"].append(b)
            restarts = cooperative.statistics().restarts
            if restarts:
                raise RuntimeError(f"the cooperative pool restarted {restarts} workers")
    finally:
        telemetry.detach("bench-cancel")
    return out


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    n = 5 if quick else 20
    log("cancellation: cancel to ready again, cooperative vs kill")
    samples = trio.run(rounds, n)
    return {"cooperative": median(samples["cooperative"]), "kill": median(samples["kill"]),
            "rounds": n, "samples": samples}
