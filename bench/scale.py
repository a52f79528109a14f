"""Scale: the pool's CPU per call as waiters and workers grow (fake workers).

Fake workers (:class:`engine.testing.fakes.FakeWorkerFactory`) answer from a
task in this process over memory streams with the real framing, so there is no
process to wait for and the whole cost is this process's CPU: the pool's own
work plus a constant per call for the fake's side, the same in every row.

Every row runs ``callers`` tasks that each call ``echo`` in a loop, forever,
on a pool of ``workers`` fakes. With more callers than workers the rest wait
in the pool's queue, and since a served caller queues again at once, the queue
holds ``callers - workers`` waiters for the whole measurement: a steady state,
not a burst draining. Once every caller has made its first request, and some
calls more, ``calls`` consecutive completions are timed (wall and
``process_time``). The queue's length is read when the window opens and
closes: ``callers - workers - 1`` (the caller that just finished is about to
queue again).

Pairs (target: each within 1.3x, i.e. the cost does not grow with the count):

* 1 vs 10,000 queued callers on 1 worker (3 and 10,002 callers: one served,
  one just served and about to queue again, the rest queued): the cost of
  queued waiters. Both sides hand the worker from one task to another at every
  call; the row with a single caller (nobody queued, the caller takes the
  worker back itself) is shown beside them, so that the price of a hand-off
  between tasks (one more trip through Trio's scheduler per call) is seen
  apart from the price of a long queue;
* 1 vs 1,024 workers, with 1,024 callers both times: the cost of slots.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import trio

import engine
from bench.common import PAYLOAD
from engine.testing.fakes import FakeWorkerFactory

QUEUED = 10_000
WORKERS = 1_024
_SETTLED = 20  # completions after every caller queued, before the window opens


async def steady_calls(workers: int, callers: int, calls: int) -> dict[str, Any]:
    """CPU and wall per call over ``calls`` completions (see the module doc)."""
    factory = FakeWorkerFactory()
    t = time.perf_counter()
    async with engine.open_pool(size=workers, worker_factory=factory, call_timeout=None,
                                checkout_timeout=1e9, max_waiters=callers + 1,
                                start_timeout=600) as pool:
        await pool.wait_ready(workers, timeout=600)
        start_wall = time.perf_counter() - t
        started = done = 0
        opened_at = -1
        window: dict[str, float] = {}
        finished = trio.Event()

        async def caller() -> None:
            nonlocal started, done, opened_at
            started += 1
            while True:
                await pool.call("echo", PAYLOAD)
                done += 1
                if opened_at < 0:
                    if started == callers and done >= _SETTLED:
                        # Collect the start-up's garbage now: a full collection
                        # of 10,000 new tasks landing inside a short window
                        # would be charged to the steady state it is not part of.
                        gc.collect()
                        opened_at = done
                        window["waiting_at_open"] = pool.statistics().waiting
                        window["wall"] = time.perf_counter()
                        window["cpu"] = time.process_time()
                elif done - opened_at == calls:
                    window["cpu"] = time.process_time() - window["cpu"]
                    window["wall"] = time.perf_counter() - window["wall"]
                    window["waiting_at_close"] = pool.statistics().waiting
                    finished.set()

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
            await finished.wait()
            nursery.cancel_scope.cancel()
        run_wall = time.perf_counter() - t
        t = time.perf_counter()
    close_wall = time.perf_counter() - t
    # The queue's length when the window opened and closed (the steady state
    # says callers - workers: the one who just finished queues again at once).
    return {"workers": workers, "callers": callers, "calls": calls,
            "waiting_at_open": int(window["waiting_at_open"]),
            "waiting_at_close": int(window["waiting_at_close"]),
            "wall": window["wall"], "cpu": window["cpu"],
            "cpu_per_call": window["cpu"] / calls, "wall_per_call": window["wall"] / calls,
            "start_wall": start_wall, "run_wall": run_wall, "close_wall": close_wall}


CASES = {
    "queue_0": (1, 1),
    "queue_1": (1, 3),
    "queue_many": (1, QUEUED + 2),
    "workers_1": (1, WORKERS),
    "workers_many": (WORKERS, WORKERS),
}


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Each case in rounds taking turns, the run with the least CPU per call
    kept: one window is a fraction of a second, and a neighbour's burst on
    this shared VM moved one pair's ratio from 1.09x to 1.39x."""
    calls, rounds = (300, 1) if quick else (2000, 3)
    out: dict[str, Any] = {}
    for round_number in range(rounds):
        for key, (workers, callers) in CASES.items():
            log(f"scale: {workers:,} fake worker(s), {callers:,} callers, {calls:,} calls "
                f"(round {round_number + 1} of {rounds})")
            run = trio.run(steady_calls, workers, callers, calls)
            if key not in out or run["cpu_per_call"] < out[key]["cpu_per_call"]:
                out[key] = run
    out["rounds"] = rounds
    return out
