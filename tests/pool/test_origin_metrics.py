"""The origin's success metrics with the default configuration (issue 17;
docs/VALIDATION.md maps each metric to its proof), layer 3: real workers.

Counts and ratios only: the figures hold on a loaded machine too.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
import trio

import engine
from bench import origin
from engine import Retry
from engine.errors import EngineError
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

HANG_GUARD = 60.0
READY = 10.0


async def test_500_checkouts_all_succeed() -> None:
    # Phase 1: checkout success 500/500, with 20 callers contending for 4 workers.
    callers, each = 20, 25
    done: list[int] = []
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool() as pool:  # the defaults under test
            await pool.wait_ready(pool.config.size, timeout=READY)

            async def caller(i: int) -> None:
                for n in range(each):
                    async with pool.checkout() as lease:
                        assert await lease.call("echo", [i, n]) == [i, n]
                    done.append(i)

            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(caller, i)
            stats = pool.statistics()
            pool.check_invariants()
    assert len(done) == callers * each == 500
    assert stats.crashes == 0


async def test_session_affinity_hit_rate_is_above_95_percent() -> None:
    # Phase 2: every call of a session reaches the worker holding its state,
    # while anonymous callers compete for the same workers. The bench's own
    # measurement (bench origin: "session affinity hit rate"), asserted here.
    with trio.fail_after(HANG_GUARD):
        result = await origin.affinity()
    hits, total = result["hits"], result["total"]
    assert total == origin.SESSIONS * origin.SESSION_CALLS
    assert hits / total > 0.95, f"affinity hit rate {hits}/{total}"


async def test_idempotent_calls_with_retry_stay_available_under_repeated_kills() -> None:
    # Phases 2-3: a worker SIGKILLed every 0.25 s; idempotent calls with the
    # default Retry succeed at least 99.9% of the time.
    callers, kill_every, kills_wanted = 8, 0.25, 12
    rng = random.Random(17)
    ok = failed = kills = 0
    seen: set[int] = set()
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool() as pool:
            await pool.wait_ready(pool.config.size, timeout=READY)
            stop = trio.Event()

            async def killer() -> None:
                nonlocal kills
                while kills < kills_wanted:
                    await trio.sleep(kill_every)
                    pids = pool.worker_pids()
                    seen.update(pids)
                    if pids:
                        try:
                            os.kill(rng.choice(pids), signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass
                stop.set()

            async def caller(i: int) -> None:
                nonlocal ok, failed
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        assert await pool.call("echo", [i, n], retry=Retry()) == [i, n]
                        ok += 1
                    except EngineError:
                        failed += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for i in range(callers):
                    nursery.start_soon(caller, i)
            await pool.wait_ready(pool.config.size, timeout=READY)
            assert pool.statistics().crashes >= 1
            seen.update(pool.worker_pids())
    assert kills == kills_wanted
    assert ok + failed > 1000, "too few calls to measure 99.9%"
    assert ok / (ok + failed) >= 0.999, f"availability {ok}/{ok + failed}"
    assert not [p for p in seen if pid_alive(p)]
