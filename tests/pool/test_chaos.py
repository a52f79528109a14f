"""The pool under fire: random SIGKILLs, start failures and bad policies (layer 3).

The headline test is the design's promise in one run: many callers, workers
killed at random, and still every call ends (a correct result or a typed
EngineError, never a hang), the pool heals, and nothing survives it.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from typing import Any

import pytest
import trio

import engine
from engine import telemetry
from engine.errors import AppStartFailed, EngineError
from engine.pool.contract import CheckinOutcome, CheckoutRequest, Ok, WorkerInfo
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

READY = 10.0


async def test_random_sigkills_under_load() -> None:
    callers, size, kill_every, kill_for = 32, 4, 0.1, 5.0
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    wrong: list[Any] = []
    seen_pids: set[int] = set()
    kills = 0
    calm = trio.Event()

    async with engine.open_pool(size=size, restart_backoff=(0.05, 0.5, 1.0),
                                max_restarts=1000, checkout_timeout=5.0,
                                call_timeout=5.0) as pool:
        await pool.wait_ready(size, timeout=READY)

        async def killer() -> None:
            nonlocal kills
            with trio.move_on_after(kill_for):
                while True:
                    pids = pool.worker_pids()
                    seen_pids.update(pids)
                    if pids:
                        try:
                            os.kill(rng.choice(pids), signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass  # already dead and reaped: fine
                    pool.check_invariants()
                    await trio.sleep(kill_every)
            calm.set()

        async def caller(i: int) -> None:
            n = 0
            while not calm.is_set():
                n += 1
                command, args = ("sleep", {"seconds": 0.01}) if n % 3 == 0 \
                    else ("echo", {"caller": i, "n": n})
                # Generous: only there so that a hung call fails the test.
                with trio.fail_after(20):
                    try:
                        result = await pool.call(command, args)
                    except EngineError as exc:
                        kind = type(exc).__name__
                    else:
                        kind = "ok"
                        expected = args if command == "echo" else result
                        if result != expected or (command == "sleep"
                                                   and not isinstance(result, dict)):
                            wrong.append((command, args, result))
                outcomes[kind] = outcomes.get(kind, 0) + 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for i in range(callers):
                nursery.start_soon(caller, i)

        assert not wrong, f"wrong results: {wrong[:5]}"
        assert kills >= 10
        assert outcomes.get("ok", 0) > 100, outcomes
        # Every failure was typed; the kills hit calls in flight at least once.
        assert outcomes.get("WorkerCrashed", 0) >= 1, outcomes
        # Healed: all workers back within 2 s of the last kill.
        await pool.wait_ready(size, timeout=2.0)
        stats = pool.statistics()
        assert stats.crashes >= 1 and stats.restarts >= 1
        pool.check_invariants()
        assert await pool.call("echo", "after") == "after"
        seen_pids.update(pool.worker_pids())
    assert not [p for p in seen_pids if pid_alive(p)]


async def test_always_failing_start_is_paced_by_backoff() -> None:
    window = 2.0
    low, high = 0.2, 1.0
    max_restarts = 4
    spawned: list[tuple[str, float]] = []  # (worker_id, trio time)

    def on_spawn(event: Any, measurements: Any, metadata: Any) -> None:
        spawned.append((str(metadata["worker_id"]), trio.current_time()))

    telemetry.attach("test-paced-spawns", [("engine", "worker", "spawn")], on_spawn)
    try:
        # No jitter: every delay is exactly its bound, so the pace is deterministic.
        async with engine.open_pool(app="tests.apps.always_fails", size=1,
                                    restart_backoff=(low, high, 0.0), max_restarts=1000,
                                    start_timeout=5.0) as paced, \
                engine.open_pool(app="tests.apps.always_fails", size=1,
                                 restart_backoff=(low, high, 1.0), max_restarts=max_restarts,
                                 restart_period=60.0, restart_cooldown=60.0,
                                 start_timeout=5.0) as capped:
            await trio.sleep(window)
            paced_times = [t for w, t in spawned if w.startswith(f"{paced.label}-")]
            capped_spawns = sum(1 for w, _ in spawned if w.startswith(f"{capped.label}-"))
            # The failing pools report why, fast and typed.
            with pytest.raises(AppStartFailed, match=r"^RuntimeError: always_fails"):
                await paced.wait_ready(1, timeout=0.1)
            with pytest.raises(AppStartFailed):
                await capped.call("echo", 1, checkout_timeout=0.2)
            assert paced.statistics().start_failures >= 2
    finally:
        telemetry.detach("test-paced-spawns")
    # Restart k waits bound(k) = 0, low, 2*low, ... capped at high (no jitter) after
    # the failure of the previous start: consecutive spawns are at least that far
    # apart, so only a bounded number of spawns fit in the window.
    delays = [0.0] + [min(high, low * 2 ** i) for i in range(100)]
    gaps = [b - a for a, b in itertools.pairwise(paced_times)]
    for k, gap in enumerate(gaps):
        assert gap >= delays[k] * 0.99, (k, gaps)
    bound = sum(1 for k in range(1, len(delays) + 1) if sum(delays[:k - 1]) <= window)
    assert 3 <= len(paced_times) <= bound, (paced_times, bound)
    # Full jitter can make delays tiny, but the intensity limit still caps the
    # rate: the first start, max_restarts restarts, then a cooldown longer than
    # the window.
    assert 2 <= capped_spawns <= 1 + max_restarts, capped_spawns


async def test_one_slot_failing_to_start_leaves_the_others_serving() -> None:
    size = 3
    async with engine.open_pool(app="tests.apps.flaky_start", size=size,
                                env={"FLAKY_FAIL_SLOTS": "0"},
                                restart_backoff=(0.05, 0.2, 1.0), max_restarts=1000) as pool:
        await pool.wait_ready(size - 1, timeout=READY)
        served_by: set[str] = set()
        # Keep calling while slot 0 fails to start over and over.
        with trio.fail_after(20):
            while pool.statistics().start_failures < 6:
                answer = await pool.call("ping", checkout_timeout=2.0)
                served_by.add(answer["worker_id"])
                await trio.sleep(0.02)
        assert served_by, "no call was served"
        assert not any(w.startswith(f"{pool.label}-0.") for w in served_by), served_by
        stats = pool.statistics()
        # A single bad slot must not open the pool-wide breaker.
        assert stats.breaker == "closed", stats
        assert stats.ready + stats.busy == size - 1
        last = pool.inspect().last_start_error
        assert last is not None
        assert any("flaky_start" in line for line in last.stderr_tail)


class FlakyPolicy:
    """Breaks the contract on the first checkouts and checkins, then behaves."""

    def __init__(self) -> None:
        self.checkouts = 0
        self.checkins = 0

    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
        self.checkouts += 1
        if self.checkouts == 1:
            return {"error": "x"}
        if self.checkouts == 2:
            return None
        if self.checkouts == 3:
            raise RuntimeError("policy bug")
        return Ok()

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any:
        self.checkins += 1
        if self.checkins == 1:
            return "keep it"
        if self.checkins == 2:
            raise ValueError("checkin bug")
        return Ok()


async def test_bad_policy_never_crashes_the_pool() -> None:
    policy = FlakyPolicy()
    with telemetry.capture([("engine", "contract", "violation")]) as seen:
        async with engine.open_pool(size=4, policy=policy,
                                    restart_backoff=(0.05, 0.2, 1.0)) as pool:
            await pool.wait_ready(4, timeout=READY)
            pids_before = set(pool.worker_pids())
            # Three bad checkout answers remove three workers; the fourth serves.
            assert await pool.call("echo", 1) == 1
            # Two bad checkin answers remove the workers that served.
            assert await pool.call("echo", 2) == 2
            for i in range(5):
                assert await pool.call("echo", i) == i
            await pool.wait_ready(4, timeout=READY)
            stats = pool.statistics()
            assert stats.restarts >= 4
            assert pids_before - set(pool.worker_pids())
            assert pool.metrics().counters["contract_violations"] == 5
            pool.check_invariants()
    events = [e for e in seen if e.metadata.get("pool") == pool.label]
    callbacks = sorted(str(e.metadata["callback"]) for e in events)
    assert callbacks == ["FlakyPolicy.on_checkin"] * 2 + ["FlakyPolicy.on_checkout"] * 3


async def test_pool_without_any_working_slot_opens_the_breaker() -> None:
    opened = trio.Event()

    def on_transition(event: Any, measurements: Any, metadata: Any) -> None:
        if metadata.get("new") == "open":
            opened.set()

    telemetry.attach("test-breaker-open", [("engine", "breaker", "transition")], on_transition)
    try:
        async with engine.open_pool(app="tests.apps.always_fails", size=2,
                                    restart_backoff=(0.01, 0.05, 1.0), breaker_reset=30.0,
                                    max_restarts=1000) as pool:
            with trio.fail_after(15):
                await opened.wait()
            assert pool.statistics().breaker == "open"
            # The breaker opened because no worker starts: the caller is told
            # that cause (not only that the pool is unavailable).
            with pytest.raises(AppStartFailed) as info:
                await pool.call("echo", 1)
            assert info.value.app == "tests.apps.always_fails"
    finally:
        telemetry.detach("test-breaker-open")
