"""Throughput (8 callers calling back to back) and the idle cost of a pool.

Throughput: each contender in its own ``trio.run`` (so no peer's process cache
leaks into another's figures), warmed with 8 callers, then 8 callers for a
fixed time; the best of two (quick) or three interleaved runs is kept, with the
CPU of that run.

Idle: a pool of 4 workers after a burst of calls (so that both ends' polling
averages say "polling pays" when the burst ends), then nothing for a few
seconds; the CPU that pool costs per second of wall time, with the default
busy-polling and with ``busy_poll=0``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import engine
from bench.common import CALLERS, PAYLOAD, Window, throughput_window, warm
from bench.contenders import open_contender
from bench.cpu import CpuMeter

CONTENDERS = ("pool", "pool_no_poll", "anyio", "trio_parallel", "process_pool_executor")
IDLE_SIZE = 4


async def one_window(name: str, workers: int, seconds: float) -> Window:
    async with open_contender(name, workers, CALLERS) as contender:
        return await throughput_window(contender.call, seconds, contender.pids)


def best_of(attempts: int, names: tuple[str, ...], workers: int, seconds: float,
            log: Callable[[str], None], what: str = "throughput",
            measure: Callable[[str, int, float], Awaitable[Window]] = one_window,
            ) -> dict[str, Window]:
    """The best run (by calls/s) of ``attempts`` interleaved runs per contender;
    ``measure(name, workers, seconds)`` is one run (each in its own
    ``trio.run``)."""
    best: dict[str, Window] = {}
    for attempt in range(attempts):
        for name in names:
            log(f"{what}: {name}, {workers} workers (run {attempt + 1} of {attempts})")
            window = trio.run(measure, name, workers, seconds)
            if name not in best or window.rate > best[name].rate:
                best[name] = window
    return best


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    seconds, runs = (0.5, 2) if quick else (1.0, 3)
    out: dict[str, Any] = {"seconds": seconds, "callers": CALLERS, "runs": runs}
    for workers in (2, 4):
        best = best_of(runs, CONTENDERS, workers, seconds, log)
        out[str(workers)] = {name: w.to_json() for name, w in best.items()}
    return out


async def idle_pool(seconds: float, busy_poll: float | None) -> dict[str, float]:
    extra: dict[str, Any] = {} if busy_poll is None else {"busy_poll": busy_poll}
    async with engine.open_pool(size=IDLE_SIZE, call_timeout=None, **extra) as pool:
        await pool.wait_ready(IDLE_SIZE, timeout=60)

        async def call() -> Any:
            return await pool.call("echo", PAYLOAD)

        await warm(call, IDLE_SIZE, rounds=200)
        meter = CpuMeter(pool.worker_pids())
        started = time.perf_counter()
        await trio.sleep(seconds)
        wall = time.perf_counter() - started
        parent, workers = meter.stop()
    return {"wall": wall, "parent_cpu": parent, "worker_cpu": workers,
            "cpu_per_second": (parent + workers) / wall,
            "parent_cpu_per_second": parent / wall, "worker_cpu_per_second": workers / wall}


def measure_idle(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    out: dict[str, Any] = {"seconds": seconds, "size": IDLE_SIZE}
    for name, busy_poll in (("pool", None), ("pool_no_poll", 0.0)):
        log(f"idle pool of {IDLE_SIZE}: {name}, {seconds:.0f} s")
        out[name] = trio.run(idle_pool, seconds, busy_poll)
    return out
