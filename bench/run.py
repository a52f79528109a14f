"""engine benchmarks against peers, in one run: ``python -m bench`` (or
``python bench/run.py``). Prints one table of figures and ratios with pass/fail
columns for the project's targets; never asserts.

Sections (each in its own ``trio.run`` so no peer's process cache leaks into
another's figures):

* sequential round trip, median of many: the floor (a bare Trio pipe echo with
  the same framing, :mod:`bench.floor`), the raw ``ProcessWorker``, ``pool.call``
  on one worker, ``anyio.to_process.run_sync`` on the Trio backend,
  ``trio_parallel.run_sync`` and ``ProcessPoolExecutor`` (through
  ``trio.to_thread``). The contenders take turns in rounds, so drift (CPU
  frequency, a noisy neighbour) hits them all alike;
* throughput with 2 and 4 workers and 8 callers;
* start-up: a bare interpreter (``python -c pass``) vs spawn-to-hello, crash to
  replacement ready, pool start for 1, 8 and 64 workers.

Options: ``--quick`` (fewer samples, for a smoke run), ``--json PATH``,
``--markdown`` (print the table as Markdown), ``--profile`` (profile the
``pool.call`` path with cProfile and print where the time goes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import engine
from bench.floor import open_floor
from engine import telemetry
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker

PAYLOAD = {"n": 1, "text": "x" * 64}
CALLERS = 8
Call = Callable[[], Awaitable[Any]]


# --- helpers --------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


async def _time_calls(call: Call, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        await call()
        out.append(clock() - t)
    return out


async def _throughput(call: Call, seconds: float, callers: int = CALLERS) -> float:
    """Calls per second completed by ``callers`` tasks calling back to back."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            if time.perf_counter() <= stop_at:
                done += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return done / min(seconds, time.perf_counter() - started)


async def _warm(call: Call, concurrency: int, rounds: int = 20) -> None:
    """Start every worker a peer will use (they spawn lazily) and warm it."""
    for _ in range(rounds):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(call)


def _ppe(workers: int) -> ProcessPoolExecutor:
    # forkserver: forking a process that already runs Trio's threads is unsafe.
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver"))


# --- sequential round trips --------------------------------------------------------------


async def sequential(rounds: int, per_round: int) -> dict[str, list[list[float]]]:
    import anyio
    import anyio.to_process
    import trio_parallel  # type: ignore[import-untyped]

    async with AsyncExitStack() as stack:
        floor = await stack.enter_async_context(open_floor())
        json_floor = await stack.enter_async_context(open_floor(json_child=True))
        worker = await stack.enter_async_context(open_process_worker(SpawnRequest(
            worker_id="bench-worker", app="engine.workers.programs", start_timeout=30)))
        pool = await stack.enter_async_context(engine.open_pool(size=1, call_timeout=None))
        await pool.wait_ready(1, timeout=30)
        # The same without busy-polling: what the polling buys, and where the
        # pool stands against peers that sleep for every reply as well.
        quiet = await stack.enter_async_context(
            engine.open_pool(size=1, call_timeout=None, busy_poll=0))
        await quiet.wait_ready(1, timeout=30)
        tp = await stack.enter_async_context(trio_parallel.open_worker_context())
        tp_limit = trio.CapacityLimiter(1)
        anyio_limit = anyio.CapacityLimiter(1)
        ppe = stack.enter_context(_ppe(1))

        async def ppe_call() -> Any:
            future = ppe.submit(dict, PAYLOAD)
            return await trio.to_thread.run_sync(future.result)

        contenders: dict[str, Call] = {
            "floor": lambda: floor.call("echo", PAYLOAD),
            "json_floor": lambda: json_floor.call("echo", PAYLOAD),
            "process_worker": lambda: worker.call("echo", PAYLOAD),
            "pool": lambda: pool.call("echo", PAYLOAD),
            "pool_no_poll": lambda: quiet.call("echo", PAYLOAD),
            "anyio": lambda: anyio.to_process.run_sync(dict, PAYLOAD, limiter=anyio_limit),
            "trio_parallel": lambda: tp.run_sync(dict, PAYLOAD, limiter=tp_limit),
            "process_pool_executor": ppe_call,
        }
        for call in contenders.values():
            assert await call() == PAYLOAD
            await _time_calls(call, 100)
        samples: dict[str, list[list[float]]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, call in contenders.items():
                samples[name].append(await _time_calls(call, per_round))
        return samples


# --- throughput ------------------------------------------------------------------------


async def throughput_pool(workers: int, seconds: float, busy_poll: float | None = None) -> float:
    extra = {} if busy_poll is None else {"busy_poll": busy_poll}
    async with engine.open_pool(size=workers, call_timeout=None,
                                max_waiters=10_000, **extra) as pool:
        await pool.wait_ready(workers, timeout=30)

        async def call() -> Any:
            return await pool.call("echo", PAYLOAD)

        await _warm(call, CALLERS)
        return await _throughput(call, seconds)


async def throughput_anyio(workers: int, seconds: float) -> float:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(workers)

    async def call() -> Any:
        return await anyio.to_process.run_sync(dict, PAYLOAD, limiter=limiter)

    await _warm(call, CALLERS)
    return await _throughput(call, seconds)


async def throughput_trio_parallel(workers: int, seconds: float) -> float:
    import trio_parallel

    limiter = trio.CapacityLimiter(workers)
    async with trio_parallel.open_worker_context() as ctx:
        async def call() -> Any:
            return await ctx.run_sync(dict, PAYLOAD, limiter=limiter)

        await _warm(call, CALLERS)
        return await _throughput(call, seconds)


async def throughput_ppe(workers: int, seconds: float) -> float:
    with _ppe(workers) as ppe:
        async def call() -> Any:
            future = ppe.submit(dict, PAYLOAD)
            return await trio.to_thread.run_sync(future.result)

        await _warm(call, CALLERS)
        return await _throughput(call, seconds)


# --- start-up, recovery ------------------------------------------------------------------


async def startup(n: int) -> dict[str, list[float]]:
    """Bare interpreter, spawn-to-hello and crash-to-replacement, interleaved.

    One sample of each per round, so a noisy moment hits all three. The crash
    is a SIGKILL of the only worker of a pool whose ``healthy_period`` is tiny:
    every kill is then the first crash after a healthy run, the pool's
    immediate-restart path, which is what this measures (restarts in a crash
    loop are paced by backoff and restart intensity on purpose).
    """
    ready = trio.Event()
    ready_at = 0.0

    def on_ready(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal ready_at
        ready_at = time.perf_counter()
        ready.set()

    out: dict[str, list[float]] = {"bare": [], "hello": [], "crash": []}
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
                    out["crash"].append(ready_at - t)
    finally:
        telemetry.detach("bench-ready")
    return out


async def pool_start(workers: int, n: int) -> tuple[list[float], list[float]]:
    starts, closes = [], []
    for _ in range(n):
        t = time.perf_counter()
        async with engine.open_pool(size=workers, start_timeout=60) as pool:
            await pool.wait_ready(workers, timeout=120)
            starts.append(time.perf_counter() - t)
            t = time.perf_counter()
        closes.append(time.perf_counter() - t)
    return starts, closes


# --- profiling ----------------------------------------------------------------------------


def profile_pool_call(calls: int = 5000) -> str:
    """Where a pool.call's time goes: a wall-clock breakdown, then cProfile of
    sequential calls on one worker and of 8 callers on 2 workers."""
    import cProfile
    import io
    import pstats

    out = io.StringIO()

    async def breakdown() -> None:
        async with open_process_worker(SpawnRequest(
                worker_id="bench-worker", app="engine.workers.programs",
                start_timeout=30)) as worker, \
                engine.open_pool(size=1, call_timeout=None) as pool:
            await pool.wait_ready(1, timeout=30)

            async def checkout_only() -> None:
                async with pool.checkout():
                    pass

            parts: dict[str, Call] = {
                "ProcessWorker.call": lambda: worker.call("echo", PAYLOAD),
                "pool.checkout() + checkin, no call": checkout_only,
                "pool.call": lambda: pool.call("echo", PAYLOAD),
            }
            medians: dict[str, list[float]] = {k: [] for k in parts}
            for call in parts.values():
                await _time_calls(call, 200)
            for _ in range(5):
                for name, call in parts.items():
                    medians[name].append(_median(await _time_calls(call, 500)))
            print("wall clock, min of 5 medians:", file=out)
            for name, values in medians.items():
                print(f"  {name:40s} {_us(min(values))}", file=out)

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

            await _warm(call, CALLERS)
            profiler.enable()
            rate = await _throughput(call, 1.5)
            profiler.disable()
            print(f"\n8 callers on 2 workers under cProfile: {rate:,.0f} calls/s", file=out)

    trio.run(breakdown)
    for title, scenario in ((f"{calls} sequential pool.call, 1 worker", sequential_calls),
                            ("8 callers, 2 workers, 1.5 s", contended_calls)):
        profiler = cProfile.Profile()
        trio.run(scenario, profiler)
        print(f"\n=== cProfile: {title} ===", file=out)
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(22)
    return out.getvalue()


# --- the run ---------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": str(os.cpu_count()), "cpu": cpu,
            "python": platform.python_version(), "implementation": sys.implementation.name,
            "os": f"{platform.system()} {platform.release()}", "trio": trio.__version__,
            "engine": engine.__version__}


def compile_engine() -> str:
    """Write the engine's bytecode cache, as any normal install has it.

    With PYTHONDONTWRITEBYTECODE set (some sandboxes and CI images set it)
    a source checkout never gets one, and every worker start then compiles the
    runtime from source: ~15 ms of a ~40 ms spawn-to-hello on this machine.
    """
    import compileall

    root = Path(engine.__file__).resolve().parent
    ok = compileall.compile_dir(str(root), quiet=1)
    return "compiled" if ok else "compile failed"


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    rounds, per_round = (3, 200) if quick else (10, 300)
    seconds = 0.5 if quick else 1.0
    n_start = 5 if quick else 30
    results: dict[str, Any] = {"machine": machine(), "quick": quick}

    log("sequential round trips")
    seq = trio.run(sequential, rounds, per_round)
    # Interference (another process on the machine) only ever adds time, so
    # the best of the rounds' medians is the steadiest estimate; every
    # contender gets the same treatment, and the rounds were interleaved.
    results["sequential"] = {
        name: {"median": min(_median(r) for r in rounds_),
               "p90": min(_p90(r) for r in rounds_),
               "overall_median": _median([x for r in rounds_ for x in r]),
               "n": sum(len(r) for r in rounds_), "rounds": len(rounds_)}
        for name, rounds_ in seq.items()}
    results["throughput"] = {}
    async def throughput_pool_no_poll(workers: int, seconds: float) -> float:
        return await throughput_pool(workers, seconds, busy_poll=0)

    contenders = (("pool", throughput_pool), ("pool_no_poll", throughput_pool_no_poll),
                  ("anyio", throughput_anyio),
                  ("trio_parallel", throughput_trio_parallel),
                  ("process_pool_executor", throughput_ppe))
    for workers in (2, 4):
        # Best of two interleaved runs each, for the same reason.
        for attempt in range(2):
            for name, fn in contenders:
                log(f"throughput: {name}, {workers} workers (run {attempt + 1} of 2)")
                key = f"{name}/{workers}"
                rate = trio.run(fn, workers, seconds)
                results["throughput"][key] = max(rate, results["throughput"].get(key, 0.0))
    log("start-up")
    start = trio.run(startup, n_start)
    results["bare_interpreter"] = _median(start["bare"])
    results["spawn_to_hello"] = _median(start["hello"])
    results["crash_to_replacement"] = _median(start["crash"])
    results["pool_start"] = {}
    for workers, n in ((1, 5), (8, 3), (64, 1)):
        log(f"pool start: {workers} workers")
        starts, closes = trio.run(pool_start, workers, 2 if quick and workers < 64 else n)
        results["pool_start"][str(workers)] = {"start": _median(starts),
                                               "close": _median(closes)}
    return results


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _versus(ratio: float, better: str, worse: str) -> str:
    """'pool 2.10x faster' or 'pool 1.30x slower' (never 'faster' below 1)."""
    if ratio >= 1:
        return f"pool {ratio:.2f}x {better}"
    return f"pool {1 / ratio:.2f}x {worse}"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measurement, value, ratio, target, result) rows of the table."""
    seq = r["sequential"]
    floor = seq["floor"]["median"]
    pool = seq["pool"]["median"]
    out: list[tuple[str, str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    def value(name: str) -> str:
        return f"{_us(seq[name]['median'])} (p90 {_us(seq[name]['p90'])})"

    n = seq["floor"]["n"] // seq["floor"]["rounds"]
    out.append((f"[sequential round trip: best of {seq['floor']['rounds']} round medians "
                f"({n} calls each)]", "", "", "", ""))
    out.append(("floor: Trio pipe echo, same framing", value("floor"), "1.00x", "", ""))
    jf = seq["json_floor"]["median"] / floor
    out.append(("  floor + JSON decode/encode in the child", value("json_floor"),
                f"{jf:.2f}x floor", "(yardstick)", ""))
    pw = seq["process_worker"]["median"] / floor
    out.append(("ProcessWorker.call (raw worker)", value("process_worker"),
                f"{pw:.2f}x floor", "<= 1.15x", verdict(pw <= 1.15)))
    pr = pool / floor
    out.append(("pool.call, 1 worker: checkout+call+checkin", value("pool"),
                f"{pr:.2f}x floor", "<= 1.25x", verdict(pr <= 1.25)))
    out.append(("  the same with busy_poll=0 (no polling)", value("pool_no_poll"),
                f"{seq['pool_no_poll']['median'] / floor:.2f}x floor", "", ""))
    for name, label, target, need in (
            ("anyio", "anyio.to_process.run_sync (Trio backend)", "pool faster", 1.0),
            ("trio_parallel", "trio_parallel.run_sync", "pool >= 2x faster", 2.0),
            ("process_pool_executor", "ProcessPoolExecutor via trio.to_thread", "", 0.0)):
        speedup = seq[name]["median"] / pool
        ok = speedup > need if need == 1.0 else speedup >= need
        out.append((label, value(name), _versus(speedup, "faster", "slower"), target,
                    verdict(ok) if target else ""))
    tp = r["throughput"]
    for workers in (2, 4):
        out.append((f"[throughput, {workers} workers, {CALLERS} callers]", "", "", "", ""))
        mine = tp[f"pool/{workers}"]
        out.append(("pool.call", f"{mine:,.0f} calls/s", "1.00x", "", ""))
        quiet = tp[f"pool_no_poll/{workers}"]
        out.append(("  the same with busy_poll=0 (no polling)", f"{quiet:,.0f} calls/s",
                    f"{quiet / mine:.2f}x", "", ""))
        for name, label, target in (("anyio", "anyio.to_process.run_sync", "pool ahead"),
                                    ("trio_parallel", "trio_parallel.run_sync", "pool ahead"),
                                    ("process_pool_executor", "ProcessPoolExecutor", "")):
            theirs = tp[f"{name}/{workers}"]
            out.append((label, f"{theirs:,.0f} calls/s",
                        _versus(mine / theirs, "ahead", "behind"), target,
                        verdict(mine > theirs) if target else ""))
    out.append(("[start-up and recovery, medians]", "", "", "", ""))
    bare, hello, crash = r["bare_interpreter"], r["spawn_to_hello"], r["crash_to_replacement"]
    out.append(("python -c pass (bare interpreter)", _ms(bare), "1.00x", "", ""))
    out.append(("spawn to hello ('hello' below)", _ms(hello), f"{hello / bare:.2f}x bare",
                "<= 2x", verdict(hello / bare <= 2.0)))
    out.append(("crash to replacement ready (SIGKILL)", _ms(crash),
                f"{crash / hello:.2f}x hello", "<= 1.5x", verdict(crash / hello <= 1.5)))
    for workers, s in r["pool_start"].items():
        out.append((f"pool start / close, {workers} worker{'s' if workers != '1' else ''}",
                    f"{_ms(s['start'])} / {_ms(s['close'])}",
                    f"{s['start'] / hello:.2f}x hello", "", ""))
    return out


def describe(m: dict[str, str]) -> str:
    load = f"; load average {m['load']} before the run" if "load" in m else ""
    pyc = f"; engine bytecode cache {m['bytecode']}" if "bytecode" in m else ""
    return (f"{m['cpus']} CPUs ({m['cpu']}), {m['os']}, {m['implementation']} "
            f"{m['python']}, trio {m['trio']}, engine {m['engine']}{load}{pyc}")


def print_table(r: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=140)
    table = Table(title=f"engine benchmarks: {describe(r['machine'])}", box=box.SIMPLE_HEAD,
                  title_justify="left")
    for col in ("measurement", "value", "ratio", "target", "result"):
        table.add_column(col, justify="left" if col in ("measurement", "target") else "right",
                         no_wrap=True)
    for row in rows(r):
        if row[0].startswith("["):
            table.add_row(f"[bold]{row[0][1:-1]}[/]", "", "", "", "")
            continue
        result = {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]"}.get(row[4], row[4])
        table.add_row(row[0], row[1], row[2], row[3], result)
    console.print(table)


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Machine: {describe(r['machine'])}", "",
             "| measurement | value | ratio | target | result |",
             "|---|---:|---:|---|---:|"]
    for row in rows(r):
        if row[0].startswith("["):
            lines.append(f"| **{row[0][1:-1]}** | | | | |")
        else:
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not write the engine's bytecode cache first (to measure "
                             "worker start-up without it)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the pool.call path (cProfile) and print it")
    args = parser.parse_args(argv)
    # The crash-to-replacement section kills workers on purpose: the pool's
    # warning per crash is expected here, not news.
    logging.getLogger("engine").setLevel(logging.ERROR)
    if args.profile:
        print(profile_pool_call())
        return 0

    def log(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    bytecode = "not written (--no-compile)" if args.no_compile else compile_engine()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = measure(args.quick, log)
    results["machine"]["bytecode"] = bytecode
    results["seconds"] = time.perf_counter() - started
    # Other processes on the machine skew figures: say how busy it was (before
    # the run: during it, our own 64-worker pool start counts as load too).
    results["machine"]["load"] = f"{load_before:.2f}"
    print_table(results)
    if args.markdown:
        print(markdown(results))
    print(f"(bench ran in {results['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
