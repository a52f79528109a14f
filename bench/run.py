"""engine benchmarks against the spin floor and peers, in one run: ``python -m
bench`` (or ``python bench/run.py``). Prints one table of figures, CPU per call
and ratios with pass/fail columns for the project's targets; never asserts.

Sections (``--sections``, default all; each in its own ``trio.run`` or more, so
no peer's process cache leaks into another's figures):

* latency: sequential round trips on one worker, interleaved rounds: the spin
  floor (:mod:`bench.spin`) and the breakdown rows up to ``pool.call``, the Trio
  pipe echo (:mod:`bench.floor`), the peers (:mod:`bench.latency`);
* throughput: 8 callers, 2 and 4 workers (:mod:`bench.throughput`);
* idle: CPU per second of an idle pool of 4, with and without busy-polling;
* contended: sequential and throughput with a busy loop on every core
  (:mod:`bench.contended`, :mod:`bench.hog`);
* scale: CPU per call with 1 vs 10,000 queued callers and 1 vs 1,024 workers,
  fake workers (:mod:`bench.scale`);
* startup: bare interpreter, spawn-to-hello, crash to replacement, pool start
  and close for 1, 4, 64 and 256 workers, RSS (:mod:`bench.startup`);
* origin: the origin's success metrics with the default configuration
  (issue 17): checkout success, session affinity, availability with Retry
  under repeated kills, hung-worker detection (:mod:`bench.origin`);
* cancel: a call cancelled mid-way, to its worker ready again (cooperative)
  against to its replacement ready (``cancel_grace=0``) (:mod:`bench.cancel`);
* remote: workers through ssh on a loopback sshd against local ones: round
  trip, spawn-to-hello, how long a busy remote worker outlives its ssh client
  or its pool's process (:mod:`bench.remote`; skipped without sshd);
* run_sync: ``engine.run_sync`` against ``trio_parallel.run_sync`` and
  ``anyio.to_process.run_sync``: latency, throughput, 10 MB round trip,
  CPU-bound batch (:mod:`bench.run_sync`).

Options: ``--quick`` (fewer samples, for a smoke run), ``--sections``,
``--json PATH`` (every figure), ``--markdown`` (print the table as Markdown),
``--profile`` (profile the ``pool.call`` path with cProfile instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import engine
from bench import (
    cancel,
    contended,
    latency,
    origin,
    remote,
    run_sync,
    scale,
    startup,
    throughput,
)
from bench.table import COLUMNS, markdown, print_table, rows

Log = Callable[[str], None]


def _latency(quick: bool, log: Log) -> Any:
    log("latency: sequential round trips")
    return latency.measure(quick)


SECTIONS: dict[str, Callable[[bool, Log], Any]] = {
    "latency": _latency,
    "throughput": throughput.measure,
    "idle": throughput.measure_idle,
    "contended": contended.measure,
    "scale": scale.measure,
    "startup": startup.measure,
    "origin": origin.measure,
    "cancel": cancel.measure,
    "remote": remote.measure,
    "run_sync": run_sync.measure,
}


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


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(SECTIONS)}")
    return names


def measure(sections: list[str], quick: bool, log: Log) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": sections,
                               "section_seconds": {}}
    for name in SECTIONS:  # in the table's order, whatever the command line's
        if name in sections:
            started = time.perf_counter()
            results[name] = SECTIONS[name](quick, log)
            results["section_seconds"][name] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                        metavar="NAMES",
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
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
        from bench.profile import profile_pool_call

        print(profile_pool_call())
        return 0

    def log(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    bytecode = "not written (--no-compile)" if args.no_compile else compile_engine()
    started = time.perf_counter()
    # Other processes on the machine skew figures: say how busy it was (before
    # the run: during it, our own workers and hogs count as load too).
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    try:
        results = measure(args.sections, args.quick, log)
    except* KeyboardInterrupt:
        # Every section stops what it started (pools, peers, hogs) on the way
        # out. (A group: Trio wraps it when it lands among many tasks.)
        pass
    if not results:
        print("interrupted", file=sys.stderr)
        return 130
    results["machine"]["bytecode"] = bytecode
    results["machine"]["load"] = f"{load_before:.2f}"
    results["seconds"] = time.perf_counter() - started
    results["table"] = [dict(zip(COLUMNS, row, strict=True)) for row in rows(results)]
    print_table(results)
    if args.markdown:
        print(markdown(results))
    took = ", ".join(f"{k} {v:.0f} s" for k, v in results["section_seconds"].items())
    print(f"(bench ran in {results['seconds']:.0f} s: {took})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
