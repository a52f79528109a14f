"""run_sync against trio-parallel and anyio: the same call, ``fn(*args)`` in a
worker process (issue 14).

Contenders, each limited to the same number of processes:

* ``engine``: ``engine.run_sync`` (the run's default pool, sized with
  ``configure_default_pool(size=...)``);
* ``trio_parallel``: ``trio_parallel.run_sync`` with a ``CapacityLimiter``;
* ``anyio``: ``anyio.to_process.run_sync`` (Trio backend) with anyio's limiter.

Rows:

* latency: ``operator.add(1, 2)`` back to back on 1 worker; interleaved rounds
  (all three in one ``trio.run``), best round median, that round's CPU;
* 10 MB: ``bytes(value)`` of 10 MB (10 MB each way) on 1 worker, in the same
  run and rounds; best round median;
* throughput: 8 callers of ``operator.add`` on 2 workers, each contender in its
  own ``trio.run``, best of the interleaved runs, that run's CPU; with a
  breakdown row, ``engine.run_sync(kill_on_cancel=True)``: the same call
  never shielded, so the price of the default's promise (a running function
  is not cancelled: the channel shields a call once its caller is cancelled)
  is seen; it was a shielded cancel scope per call, 20-30 µs of parent CPU;
* batch: ``cpu_task.spin`` on every core: one task's time alone (on one
  worker, median of 3), then 4 tasks per core at once; the speed-up is
  ``tasks x alone / batch``, the faster of 2 batches. The nominal ideal is
  the number of cores; what this machine's cores really give is measured
  beside it: the same batch in bare processes (one per core, no library,
  each timing its own tasks), before and after the contenders, the faster
  kept. The verdict compares the batch times (bare / engine: the same work,
  so 100% means no overhead), not the speed-ups, whose "alone" times are
  taken at other moments: on this VM a task alone varied by a sixth between
  contenders, enough to move a speed-up ratio by as much.

A contender's worker pids are the processes that appeared below this one
while it was opened and warmed (``bench.cpu.descendants``), for their CPU.
"""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

import engine
from bench.common import Window, median, throughput_window, warm
from bench.cpu import CpuMeter, descendants
from bench.cpu_task import spin
from bench.throughput import best_of

CONTENDERS = ("engine", "trio_parallel", "anyio")
Run = Callable[..., Awaitable[Any]]
CALLERS = 8
BIG = 10 * 1000 * 1000
TASKS_PER_CORE = 4


@asynccontextmanager
async def _engine(workers: int) -> AsyncIterator[tuple[Run, Callable[[], list[int]]]]:
    # Set for the default pools of the bench's runs (measure() resets it).
    engine.configure_default_pool(size=workers, worker_output="discard")
    pool = await engine.current_default_pool()
    await pool.wait_ready(workers, timeout=60)
    yield engine.run_sync, pool.worker_pids


@asynccontextmanager
async def _trio_parallel(workers: int) -> AsyncIterator[tuple[Run, None]]:
    import trio_parallel  # type: ignore[import-untyped]

    limiter = trio.CapacityLimiter(workers)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await trio_parallel.run_sync(fn, *args, limiter=limiter)

    yield run, None


@asynccontextmanager
async def _anyio(workers: int) -> AsyncIterator[tuple[Run, None]]:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(workers)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_process.run_sync(fn, *args, limiter=limiter)

    yield run, None


@asynccontextmanager
async def _engine_kill(workers: int) -> AsyncIterator[tuple[Run, Callable[[], list[int]]]]:
    async with _engine(workers) as (_run, pids):
        async def run(fn: Callable[..., Any], *args: Any) -> Any:
            return await engine.run_sync(fn, *args, kill_on_cancel=True)

        yield run, pids


OPENERS = {"engine": _engine, "engine_kill": _engine_kill, "trio_parallel": _trio_parallel,
           "anyio": _anyio}
# The throughput rows add the breakdown row (see the module doc).
THROUGHPUT_CONTENDERS = ("engine", "engine_kill", "trio_parallel", "anyio")


class Opened:
    def __init__(self, name: str, run: Run, pids: Callable[[], list[int]]) -> None:
        self.name = name
        self.run = run
        self.pids = pids


@asynccontextmanager
async def _open(name: str, workers: int) -> AsyncIterator[Opened]:
    before = descendants()
    async with OPENERS[name](workers) as (run, pids):
        if await run(operator.add, 1, 2) != 3:
            raise RuntimeError(f"{name} did not add")
        await warm(lambda: run(operator.add, 1, 2), workers)
        if pids is None:
            found = sorted(descendants() - before)
            pids = lambda: found  # noqa: E731
        yield Opened(name, run, pids)


async def _rounds(rounds: int, per_round: int, big_rounds: int) -> dict[str, Any]:
    value = os.urandom(1000) * (BIG // 1000)
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(_open(name, 1)) for name in CONTENDERS]
        for o in opened:
            if await o.run(bytes, value) != value:
                raise RuntimeError(f"{o.name} did not return the 10 MB value")
        out: dict[str, Any] = {o.name: {"small": [], "big": []} for o in opened}
        for i in range(rounds):
            for o in opened:
                await trio.sleep(0.005)  # the previous contender stops polling
                out[o.name]["small"].append(await _window(o, per_round, operator.add, 1, 2))
                if i < big_rounds:
                    out[o.name]["big"].append(await _window(o, 2, bytes, value))
    return out


async def _window(o: Opened, n: int, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    meter = CpuMeter(o.pids())
    times = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        await o.run(fn, *args)
        times.append(clock() - t)
    parent, workers = meter.stop()
    return {"median": median(times), "cpu": (parent + workers) / n, "parent": parent / n,
            "workers": workers / n}


def _best(windows: list[dict[str, Any]]) -> dict[str, Any]:
    best = min(windows, key=lambda w: w["median"])
    return {"median": best["median"],
            "cpu": {"total": best["cpu"], "parent": best["parent"], "workers": best["workers"]},
            "rounds": len(windows)}


async def _throughput(name: str, workers: int, seconds: float) -> Window:
    async with _open(name, workers) as o:
        await warm(lambda: o.run(operator.add, 1, 2), CALLERS)
        return await throughput_window(lambda: o.run(operator.add, 1, 2), seconds, o.pids,
                                       CALLERS)


async def _batch(name: str, cores: int, n: int) -> dict[str, Any]:
    async with _open(name, cores) as o:
        await warm(lambda: o.run(spin, 1000), cores)
        alone = []
        for _ in range(3):
            t = time.perf_counter()
            await o.run(spin, n)
            alone.append(time.perf_counter() - t)
        tasks = cores * TASKS_PER_CORE
        meter = CpuMeter(o.pids())
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(o.run, spin, n)
        wall = time.perf_counter() - started
        parent, workers = meter.stop()
    one = median(alone)
    return {"alone": one, "batch": wall, "tasks": tasks, "cores": cores,
            "speedup": tasks * one / wall,
            "cpu": {"total": (parent + workers) / tasks, "parent": parent / tasks,
                    "workers": workers / tasks}}


# One bare process of the reference batch: import, say "ready", wait for "go",
# run its tasks, print how long they took (its own clock: no start-up in it).
_BARE = ("import sys, time\n"
         "from bench.cpu_task import spin\n"
         "n, k = int(sys.argv[1]), int(sys.argv[2])\n"
         "print('ready', flush=True)\n"
         "sys.stdin.readline()\n"
         "t = time.perf_counter()\n"
         "for _ in range(k):\n"
         "    spin(n)\n"
         "print(time.perf_counter() - t, flush=True)\n")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bare_run(processes: int, tasks_each: int, n: int) -> float:
    """Seconds until the last of ``processes`` bare processes, started
    together, ran its ``tasks_each`` tasks."""
    procs = [subprocess.Popen([sys.executable, "-c", _BARE, str(n), str(tasks_each)],
                              cwd=_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a bare batch process did not start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        return max(float(p.communicate()[0]) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _bare_batch(cores: int, n: int) -> dict[str, Any]:
    """The batch in bare processes: what this machine's cores give."""
    alone = median([_bare_run(1, 1, n) for _ in range(3)])
    batch = _bare_run(cores, TASKS_PER_CORE, n)
    tasks = cores * TASKS_PER_CORE
    return {"alone": alone, "batch": batch, "tasks": tasks, "cores": cores,
            "speedup": tasks * alone / batch}


def _calibrate(seconds: float) -> int:
    n = 20_000
    while True:
        t = time.perf_counter()
        spin(n)
        took = time.perf_counter() - t
        if took > 0.02:
            return max(1, int(n * seconds / took))
        n *= 4


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    rounds, per_round, big_rounds = (3, 100, 3) if quick else (10, 300, 5)
    log("run_sync: latency and 10 MB round trips, 1 worker each")
    seq = trio.run(_rounds, rounds, per_round, big_rounds)
    out: dict[str, Any] = {
        "latency": {name: _best(seq[name]["small"]) for name in CONTENDERS},
        "big": {name: _best(seq[name]["big"]) for name in CONTENDERS},
        "per_round": per_round, "bytes": BIG,
    }
    seconds, runs, workers = (0.5, 2, 2) if quick else (1.0, 3, 2)
    best = best_of(runs, THROUGHPUT_CONTENDERS, workers, seconds, log,
                   what="run_sync: throughput", measure=_throughput)
    out["throughput"] = {name: w.to_json() for name, w in best.items()}
    out["throughput_setup"] = {"seconds": seconds, "runs": runs, "workers": workers,
                               "callers": CALLERS}
    cores = os.cpu_count() or 1
    n = _calibrate(0.05 if quick else 0.15)
    batches: dict[str, list[dict[str, Any]]] = {"bare": []}
    log(f"run_sync: CPU-bound batch, bare processes, {cores} at once")
    batches["bare"].append(_bare_batch(cores, n))
    for attempt in range(2):
        for name in CONTENDERS:
            log(f"run_sync: CPU-bound batch, {name}, {cores} workers (run {attempt + 1} of 2)")
            batches.setdefault(name, []).append(trio.run(_batch, name, cores, n))
    log(f"run_sync: CPU-bound batch, bare processes, {cores} at once (again)")
    batches["bare"].append(_bare_batch(cores, n))
    out["batch"] = {name: min(runs, key=lambda b: b["batch"])
                    for name, runs in batches.items()}
    engine.configure_default_pool()
    return out
