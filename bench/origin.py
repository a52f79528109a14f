"""The origin's success metrics (issue 17), measured with the default ``PoolConfig``.

* checkouts: 500 checkouts by 20 concurrent callers on the 4 workers, each
  with one call; how many succeeded.
* affinity: 8 sessions of 20 calls each while 4 anonymous callers compete for
  the same workers; the share of session calls served by the session's worker.
* availability: 8 callers making idempotent calls with the default ``Retry``
  while a random worker is SIGKILLed every 0.5 s (20 kills; 10 with
  ``--quick``); the share of calls that succeeded.
* hung: a worker frozen with SIGSTOP while idle, just after the pool became
  ready (its last sign of life), to out of service (its failed health check,
  ``health.failed``), against ``health_interval + health_timeout``; 3 runs (1 quick).

Recovery after a kill is the start-up section's "crash to replacement ready".
Counts and shares, so the figures mean the same on a loaded machine.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from typing import Any

import trio

import engine
from engine import PoolConfig, Retry, telemetry
from engine.errors import EngineError
from engine.process.procfs import pid_alive

READY = 30.0
CHECKOUTS, CHECKOUT_CALLERS = 500, 20
SESSIONS, SESSION_CALLS, STRANGERS = 8, 20, 4
KILL_EVERY, KILL_CALLERS = 0.5, 8


async def checkouts() -> dict[str, int]:
    ok = failed = 0
    async with engine.open_pool() as pool:
        await pool.wait_ready(pool.config.size, timeout=READY)

        async def caller(i: int) -> None:
            nonlocal ok, failed
            for n in range(CHECKOUTS // CHECKOUT_CALLERS):
                try:
                    async with pool.checkout() as lease:
                        answer = await lease.call("echo", [i, n])
                except EngineError:
                    failed += 1
                else:
                    ok += answer == [i, n]
                    failed += answer != [i, n]

        async with trio.open_nursery() as nursery:
            for i in range(CHECKOUT_CALLERS):
                nursery.start_soon(caller, i)
    return {"ok": ok, "total": ok + failed}


async def affinity() -> dict[str, int]:
    hits = total = 0
    async with engine.open_pool() as pool:
        await pool.wait_ready(pool.config.size, timeout=READY)
        stop = trio.Event()

        async def session(name: str) -> None:
            nonlocal hits, total
            first = (await pool.call("ping", session=name))["pid"]
            for _ in range(SESSION_CALLS):
                # Awaited before the +=: `hits += await ...` would read hits
                # first and lose the other sessions' counts made meanwhile.
                pid = (await pool.call("ping", session=name))["pid"]
                total += 1
                hits += pid == first

        async def stranger() -> None:
            while not stop.is_set():
                await pool.call("echo", "x")

        async with trio.open_nursery() as outer:
            for _ in range(STRANGERS):
                outer.start_soon(stranger)
            async with trio.open_nursery() as nursery:
                for s in range(SESSIONS):
                    nursery.start_soon(session, f"s{s}")
            stop.set()
    return {"hits": hits, "total": total}


async def availability(kills_wanted: int) -> dict[str, Any]:
    rng = random.Random(17)
    ok = failed = kills = 0
    async with engine.open_pool() as pool:
        await pool.wait_ready(pool.config.size, timeout=READY)
        stop = trio.Event()

        async def killer() -> None:
            nonlocal kills
            while kills < kills_wanted:
                await trio.sleep(KILL_EVERY)
                pids = pool.worker_pids()
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass  # reaped meanwhile: the next tick kills another
            stop.set()

        async def caller(i: int) -> None:
            nonlocal ok, failed
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    answer = await pool.call("echo", [i, n], retry=Retry())
                except EngineError:
                    failed += 1
                else:
                    ok += answer == [i, n]
                    failed += answer != [i, n]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for i in range(KILL_CALLERS):
                nursery.start_soon(caller, i)
    return {"ok": ok, "total": ok + failed, "kills": kills, "kill_every": KILL_EVERY}


async def hung() -> float:
    """SIGSTOP an idle worker just after the start; seconds until the pool takes
    it out of service (its failed health check: ``health.failed``)."""
    removed = trio.Event()
    removed_at = 0.0

    def on_failed(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal removed_at
        if not removed.is_set():
            removed_at = trio.current_time()
            removed.set()

    async with engine.open_pool() as pool:
        await pool.wait_ready(pool.config.size, timeout=READY)
        frozen = pool.worker_pids()[-1]
        telemetry.attach("bench-hung", [telemetry.HEALTH_FAILED], on_failed)
        os.kill(frozen, signal.SIGSTOP)
        began = trio.current_time()
        try:
            with trio.fail_after(READY):
                await removed.wait()
        finally:
            telemetry.detach("bench-hung")
            if pid_alive(frozen):
                os.kill(frozen, signal.SIGCONT)
        return removed_at - began


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    config = PoolConfig()
    out: dict[str, Any] = {}
    log(f"origin metrics: {CHECKOUTS} checkouts")
    out["checkouts"] = trio.run(checkouts)
    log("origin metrics: session affinity")
    out["affinity"] = trio.run(affinity)
    kills = 10 if quick else 20
    log(f"origin metrics: availability with Retry, {kills} kills")
    out["availability"] = trio.run(availability, kills)
    runs = 1 if quick else 3
    log(f"origin metrics: hung worker detection ({runs} runs)")
    out["hung"] = {"seconds": [trio.run(hung) for _ in range(runs)],
                   "bound": (config.health_interval or 0.0) + config.health_timeout}
    return out
