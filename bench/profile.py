"""``--profile``: where a ``pool.call``'s time goes.

A wall-clock breakdown (spin floor, raw worker, checkout + checkin alone,
``pool.call``), then cProfile of sequential calls on one worker and of 8
callers on 2 workers.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from typing import Any

import trio

import engine
from bench.common import CALLERS, PAYLOAD, Call, median, throughput_window, time_calls, warm
from bench.spin import open_spin_floor
from bench.table import us
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker


def profile_pool_call(calls: int = 5000) -> str:
    out = io.StringIO()

    async def breakdown() -> None:
        with open_spin_floor() as spin:
            async with open_process_worker(SpawnRequest(
                    worker_id="bench-worker", app="engine.workers.programs",
                    start_timeout=30)) as worker, \
                    engine.open_pool(size=1, call_timeout=None) as pool:
                await pool.wait_ready(1, timeout=30)

                async def checkout_only() -> None:
                    async with pool.checkout():
                        pass

                parts: dict[str, Call] = {
                    "spin floor": lambda: spin.acall("echo", PAYLOAD),
                    "spin floor, polling through Trio": lambda: spin.call_through_trio(
                        "echo", PAYLOAD),
                    "ProcessWorker.call": lambda: worker.call("echo", PAYLOAD),
                    "pool.checkout() + checkin, no call": checkout_only,
                    "pool.call": lambda: pool.call("echo", PAYLOAD),
                }
                medians: dict[str, list[float]] = {k: [] for k in parts}
                for call in parts.values():
                    await time_calls(call, 200)
                for _ in range(5):
                    for name, call in parts.items():
                        medians[name].append(median(await time_calls(call, 500)))
                print("wall clock, min of 5 medians:", file=out)
                for name, values in medians.items():
                    print(f"  {name:40s} {us(min(values))}", file=out)

    async def sequential_calls(profiler: cProfile.Profile) -> None:
        async with engine.open_pool(size=1, call_timeout=None) as pool:
            await pool.wait_ready(1, timeout=30)
            for _ in range(200):
                await pool.call("echo", PAYLOAD)
            profiler.enable()
            for _ in range(calls):
                await pool.call("echo", PAYLOAD)
            profiler.disable()

    async def contended_calls(profiler: cProfile.Profile) -> None:
        async with engine.open_pool(size=2, call_timeout=None) as pool:
            await pool.wait_ready(2, timeout=30)

            async def call() -> Any:
                return await pool.call("echo", PAYLOAD)

            await warm(call, CALLERS)
            profiler.enable()
            window = await throughput_window(call, 1.5, lambda: ())
            profiler.disable()
            print(f"\n8 callers on 2 workers under cProfile: {window.rate:,.0f} calls/s",
                  file=out)

    trio.run(breakdown)
    for title, scenario in ((f"{calls} sequential pool.call, 1 worker", sequential_calls),
                            ("8 callers, 2 workers, 1.5 s", contended_calls)):
        profiler = cProfile.Profile()
        trio.run(scenario, profiler)
        print(f"\n=== cProfile: {title} ===", file=out)
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(22)
    return out.getvalue()
