"""Sequential round trips: one caller, back-to-back calls, 1 worker each.

The contenders take turns in interleaved rounds (drift and noisy neighbours hit
them alike) and the best round median is kept; the CPU per call is the round
with the median CPU. Contenders:

* ``spin``: the spin floor (:mod:`bench.spin`), the reference row;
* ``spin_trio``: the same, the parent polling through Trio's scheduler;
* ``floor`` / ``json_floor``: the Trio pipe echo whose ends sleep
  (:mod:`bench.floor`), issue 3's floor, now a yardstick;
* ``process_worker``: the raw worker (``open_process_worker``), ``echo``;
* ``checkout``: ``pool.checkout()`` + checkin with no call;
* ``instant``: ``pool.call`` on an in-process worker that answers at once
  (:mod:`bench.instant`): the pool's own cost per call, core and Trio shell;
* ``json`` (not a contender): both ends' JSON work per call, in-process;
* ``pool``, ``pool_no_poll``: ``pool.call`` with default and no busy-polling;
* the peers (:mod:`bench.contenders`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio

import engine
from bench.common import PAYLOAD, Window, cpu_split, median, p90, time_calls
from bench.contenders import Contender, open_contender
from bench.cpu import CpuMeter
from bench.floor import open_floor
from bench.instant import json_cost, open_instant_pool
from bench.spin import open_spin_floor
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker

PEERS = ("pool_no_poll", "anyio", "trio_parallel", "process_pool_executor")
# A pause between two contenders' turns, so that the one before has stopped
# polling (the spin floor's child spins 2 ms after its last frame) and does not
# steal a core from the next.
_SETTLE = 0.005


async def _open_all(stack: AsyncExitStack) -> list[Contender]:
    out: list[Contender] = []
    spin = stack.enter_context(open_spin_floor())
    out.append(Contender("spin", lambda: spin.acall("echo", PAYLOAD), lambda: [spin.pid],
                         spin.child_cpu))
    out.append(Contender("spin_trio", lambda: spin.call_through_trio("echo", PAYLOAD),
                         lambda: [spin.pid], spin.child_cpu))
    floor = await stack.enter_async_context(open_floor())
    out.append(Contender("floor", lambda: floor.call("echo", PAYLOAD),
                         lambda: [floor.process.pid]))
    json_floor = await stack.enter_async_context(open_floor(json_child=True))
    out.append(Contender("json_floor", lambda: json_floor.call("echo", PAYLOAD),
                         lambda: [json_floor.process.pid]))
    worker = await stack.enter_async_context(open_process_worker(SpawnRequest(
        worker_id="bench-worker", app="engine.workers.programs", start_timeout=30)))
    worker_pid: int = getattr(worker, "os_pid", None) or worker.pid or 0
    out.append(Contender("process_worker", lambda: worker.call("echo", PAYLOAD),
                         lambda: [worker_pid]))
    pool = await stack.enter_async_context(engine.open_pool(size=1, call_timeout=None))
    await pool.wait_ready(1, timeout=30)

    async def checkout_only() -> None:
        async with pool.checkout():
            pass

    out.append(Contender("checkout", checkout_only, pool.worker_pids))
    instant = await stack.enter_async_context(open_instant_pool())
    out.append(Contender("instant", lambda: instant.call("echo", PAYLOAD), list))
    out.append(Contender("pool", lambda: pool.call("echo", PAYLOAD), pool.worker_pids))
    for name in PEERS:
        out.append(await stack.enter_async_context(open_contender(name, 1)))
    return out


async def sequential(rounds: int, per_round: int,
                     names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Interleaved rounds over every contender (or ``names`` of
    :mod:`bench.contenders`, for the contended rows); a summary per contender."""
    async with AsyncExitStack() as stack:
        if names is None:
            contenders = await _open_all(stack)
        else:
            contenders = [await stack.enter_async_context(open_contender(name, 1))
                          for name in names]
        for contender in contenders:
            await time_calls(contender.call, 100)
        samples: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
        windows: dict[str, list[Window]] = {c.name: [] for c in contenders}
        for _ in range(rounds):
            for contender in contenders:
                await trio.sleep(_SETTLE)
                meter = CpuMeter(contender.pids(), contender.probe)
                times = await time_calls(contender.call, per_round)
                parent, workers = meter.stop()
                samples[contender.name].append(times)
                windows[contender.name].append(Window(per_round, sum(times), parent, workers))
    return {name: summarize(samples[name], windows[name]) for name in samples}


def summarize(rounds: list[list[float]], windows: list[Window]) -> dict[str, Any]:
    """Interference only ever adds time (and CPU, to whoever polls), so the best
    of the rounds' medians is the steadiest estimate of a call, and the least
    CPU per call of a round the steadiest estimate of its CPU (a round's CPU is
    a mean: its slow calls count). The mean over every call is what a caller
    got, tail included: the story under contention (``cpu_mean`` goes with it).
    """
    every = [x for r in rounds for x in r]
    best = min(windows, key=lambda w: w.cpu_per_call)
    return {
        "median": min(median(r) for r in rounds),
        "p90": min(p90(r) for r in rounds),
        "overall_median": median(every),
        "mean": sum(every) / len(every),
        "n": len(every), "rounds": len(rounds),
        "cpu": cpu_split(best.parent_cpu, best.worker_cpu, best.calls),
        "cpu_mean": cpu_split(sum(w.parent_cpu for w in windows),
                              sum(w.worker_cpu for w in windows),
                              sum(w.calls for w in windows)),
        "per_round": [w.to_json() for w in windows],
    }


def measure(quick: bool) -> dict[str, Any]:
    rounds, per_round = (3, 200) if quick else (20, 300)
    out: dict[str, Any] = trio.run(sequential, rounds, per_round)
    out["json"] = {"seconds": json_cost(PAYLOAD, calls=5_000 if quick else 20_000)}
    return out
