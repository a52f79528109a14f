"""Start-up, recovery, close and memory, with real worker processes.

* Interleaved rounds (one sample of each per round, so a noisy moment hits all):
  a bare interpreter (``python -c pass``) run to exit; spawn-to-hello of a raw
  ``ProcessWorker`` and its stop (shutdown + stdin EOF to exit, as a pool's
  close does it); crash to replacement ready (SIGKILL the only worker of a pool
  whose ``healthy_period`` is tiny, so that each kill is the first crash after a
  healthy run: the immediate-restart path; crash loops are paced by backoff on
  purpose).
* Pool start (``open_pool`` + ``wait_ready``) and close for 1, 4, 64 and 256
  workers, against the ideal: ``hello x max(1, workers / cores)`` to start
  (every core spawning workers back to back) and ``stop x max(1, workers /
  cores)`` to close. The 256 is skipped when the machine has not the memory
  for it (the idle worker's RSS x 256, with a margin).
* RSS: ``VmRSS`` of an idle pool worker (after a few calls) against that of a
  bare interpreter that sleeps (``python -c``, reading its stdin), medians.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

import engine
from bench.common import PAYLOAD, median
from bench.cpu import mem_available, rss_bytes
from engine import telemetry
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker

POOL_SIZES = (1, 4, 64, 256)
_BARE_SLEEPER = "import sys; print('ready', flush=True); sys.stdin.read()"


async def recovery_rounds(n: int) -> dict[str, list[float]]:
    ready = trio.Event()
    ready_at = 0.0

    def on_ready(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal ready_at
        ready_at = time.perf_counter()
        ready.set()

    out: dict[str, list[float]] = {"bare": [], "hello": [], "stop": [], "crash": []}
    telemetry.attach("bench-ready", [("engine", "worker", "ready")], on_ready)
    try:
        # max_restarts: dozens of kills in a few seconds would otherwise (rightly)
        # trip the slot's restart intensity and measure its 5 s cooldown.
        async with engine.open_pool(size=1, healthy_period=0.01,
                                    max_restarts=1_000_000) as pool:
            await pool.wait_ready(1, timeout=30)
            for i in range(n + 2):
                t = time.perf_counter()
                await trio.run_process([sys.executable, "-c", "pass"])
                bare = time.perf_counter() - t

                request = SpawnRequest(worker_id=f"bench-spawn-{i}",
                                       app="engine.workers.programs", start_timeout=30)
                t = time.perf_counter()
                async with open_process_worker(request):
                    hello = time.perf_counter() - t
                    t = time.perf_counter()
                stop = time.perf_counter() - t

                await trio.sleep(0.02)  # let the pool's worker count as healthy
                (pid,) = pool.worker_pids()
                ready = trio.Event()
                t = time.perf_counter()
                os.kill(pid, 9)
                with trio.fail_after(30):
                    await ready.wait()
                if i >= 2:  # the first rounds pay for a cold page cache
                    out["bare"].append(bare)
                    out["hello"].append(hello)
                    out["stop"].append(stop)
                    out["crash"].append(ready_at - t)
    finally:
        telemetry.detach("bench-ready")
    return out


async def pool_start(workers: int, n: int) -> tuple[list[float], list[float]]:
    starts, closes = [], []
    for _ in range(n):
        t = time.perf_counter()
        async with engine.open_pool(size=workers, start_timeout=120) as pool:
            await pool.wait_ready(workers, timeout=300)
            starts.append(time.perf_counter() - t)
            t = time.perf_counter()
        closes.append(time.perf_counter() - t)
    return starts, closes


async def rss(n: int) -> dict[str, Any]:
    bare: list[float] = []
    worker: list[float] = []
    for _ in range(n):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _BARE_SLEEPER], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError("the bare interpreter exited early")
                line += chunk
            bare.append(float(rss_bytes(process.pid) or "nan"))
        finally:
            await process.stdin.aclose()
            await process.wait()
            await process.stdout.aclose()
        async with engine.open_pool(size=1, call_timeout=None) as pool:
            await pool.wait_ready(1, timeout=30)
            for _ in range(100):
                await pool.call("echo", PAYLOAD)
            (pid,) = pool.worker_pids()
            worker.append(float(rss_bytes(pid) or "nan"))
    return {"bare": median(bare), "worker": median(worker), "bare_samples": bare,
            "worker_samples": worker}


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    n = 5 if quick else 30
    log("start-up: bare interpreter, spawn to hello, stop, crash to replacement")
    rounds = trio.run(recovery_rounds, n)
    out: dict[str, Any] = {name: median(values) for name, values in rounds.items()}
    out["samples"] = rounds
    log("memory: idle worker vs bare interpreter")
    out["rss"] = trio.run(rss, 3 if quick else 5)
    cores = os.cpu_count() or 1
    out["cores"] = cores
    out["pool"] = {}
    for workers in POOL_SIZES:
        need = out["rss"]["worker"] * workers * 1.5
        available = mem_available()
        if available is not None and need > available:
            log(f"pool start: {workers} workers skipped ({need / 2**20:,.0f} MiB needed, "
                f"{available / 2**20:,.0f} MiB available)")
            out["pool"][str(workers)] = {"skipped": f"{available / 2**20:,.0f} MiB available, "
                                                    f"~{need / 2**20:,.0f} MiB needed"}
            continue
        # Large pools three times too (median): one start of 256 workers takes
        # seconds, long enough for a neighbour's burst to move it by half.
        repeat = (1 if quick else 3) if workers >= 64 else (2 if quick else 5)
        log(f"pool start and close: {workers} workers ({repeat}x)")
        starts, closes = trio.run(pool_start, workers, repeat)
        scale = max(1.0, workers / cores)
        out["pool"][str(workers)] = {
            "start": median(starts), "close": median(closes),
            "ideal_start": out["hello"] * scale, "ideal_close": out["stop"] * scale,
            "starts": starts, "closes": closes}
    return out
