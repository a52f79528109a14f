"""What every benchmark section shares: the payload, timing loops and statistics.

A *window* is one measured stretch of calls: how many completed, the wall time
they took and the CPU they cost, in this (the parent) process and in the
workers that served them (read from ``/proc``, see :mod:`bench.cpu`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import trio

from bench.cpu import CpuMeter, Pids

PAYLOAD = {"n": 1, "text": "x" * 64}
CALLERS = 8
Call = Callable[[], Awaitable[Any]]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


@dataclass(frozen=True)
class Window:
    """One measured stretch: ``calls`` done in ``wall`` seconds, costing
    ``parent_cpu`` seconds of this process's CPU and ``worker_cpu`` seconds of
    the workers' (both over the whole stretch, not per call)."""

    calls: int
    wall: float
    parent_cpu: float
    worker_cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.wall if self.wall > 0 else float("nan")

    @property
    def cpu_per_call(self) -> float:
        return (self.parent_cpu + self.worker_cpu) / self.calls if self.calls else float("nan")

    def to_json(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["rate"] = self.rate
        out["cpu_per_call"] = self.cpu_per_call
        out["parent_cpu_per_call"] = self.parent_cpu / self.calls if self.calls else 0.0
        out["worker_cpu_per_call"] = self.worker_cpu / self.calls if self.calls else 0.0
        return out


def cpu_split(parent: float, workers: float, calls: int) -> dict[str, float]:
    """CPU per call, in seconds, as the table and the JSON show it."""
    if not calls:
        return {"total": float("nan"), "parent": float("nan"), "workers": float("nan")}
    return {"total": (parent + workers) / calls, "parent": parent / calls,
            "workers": workers / calls}


async def time_calls(call: Call, n: int) -> list[float]:
    """Wall time of each of ``n`` back-to-back calls."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        await call()
        out.append(clock() - t)
    return out


async def throughput_window(call: Call, seconds: float, pids: Pids,
                            callers: int = CALLERS) -> Window:
    """``callers`` tasks calling back to back for ``seconds``; the CPU of this
    process and of ``pids`` over the same stretch."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            if time.perf_counter() <= stop_at:
                done += 1

    meter = CpuMeter(pids())
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    wall = min(seconds, time.perf_counter() - started)
    parent, workers = meter.stop()
    return Window(done, wall, parent, workers)


async def warm(call: Call, concurrency: int, rounds: int = 20) -> None:
    """Start every worker a contender will use (peers spawn lazily) and warm it."""
    for _ in range(rounds):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(call)
