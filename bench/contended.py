"""The contended rows: sequential calls and 8-caller throughput while a CPU hog
runs on every core (:mod:`bench.hog`).

An embedding application uses CPU too; the defaults must stay fast then. The
contenders are ``pool.call`` with the default busy-polling, the same with
``busy_poll=0``, anyio and trio-parallel, measured as in the quiet rows
(interleaved rounds; best of two or three throughput runs). Under a hog a call's time
is mostly how long the scheduler makes it wait for a core, so the sequential
verdict uses the mean over every call (what a caller gets, tail included);
the best round median is shown beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from bench.hog import cpu_hogs
from bench.latency import sequential
from bench.throughput import best_of

CONTENDERS = ("pool", "pool_no_poll", "anyio", "trio_parallel")
WORKERS = 2


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    rounds, per_round = (3, 60) if quick else (8, 150)
    seconds, runs = (0.5, 2) if quick else (1.0, 3)
    with cpu_hogs() as hogs:
        log(f"contended: {len(hogs)} CPU hogs running; sequential round trips")
        seq = trio.run(sequential, rounds, per_round, CONTENDERS)
        best = best_of(runs, CONTENDERS, WORKERS, seconds, log, "contended throughput")
    return {"hogs": len(hogs), "sequential": seq,
            "throughput": {"workers": WORKERS, "seconds": seconds, "runs": runs,
                           **{name: w.to_json() for name, w in best.items()}}}
