"""Sessions, health checks, recycling and orphans over real workers (layer 3).

Session state lives inside one worker process, so routing must be real: every
call of a session reaches the same pid, a dead worker's sessions report
SessionLost exactly once, and the pool's background upkeep (health checks,
recycling) replaces workers without a caller noticing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
from engine.errors import PoolTimeout, SessionLost, WorkerBusy
from engine.pool.pool import Pool
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD = 20.0
READY = 10.0
PROGRAM = {"id": "p1", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"}


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll an OS-level condition (a pid's fate) with a deadline."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - no event exists for an OS condition
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what} not reached within {timeout}s")


async def session_pid(pool: Pool, session: str) -> int:
    pid = (await pool.call("ping", session=session))["pid"]
    assert isinstance(pid, int)
    return pid


async def program_count(pool: Pool, session: str) -> int:
    count = (await pool.call("list_programs", session=session))["total_count"]
    assert isinstance(count, int)
    return count


class EventWaiter:
    """A trio.Event set by a telemetry event (attach/detach around a block)."""

    def __init__(self, event: tuple[str, ...], match: Callable[[Any], bool]) -> None:
        self.event = event
        self.match = match
        self.fired = trio.Event()
        self.handler_id = f"test-sessions-{id(self)}"

    def __enter__(self) -> EventWaiter:
        def handler(event: Any, measurements: Any, metadata: Any) -> None:
            if self.match(metadata):
                self.fired.set()

        telemetry.attach(self.handler_id, [self.event], handler)
        return self

    def __exit__(self, *exc: object) -> None:
        telemetry.detach(self.handler_id)


async def test_each_session_sticks_to_its_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=3) as pool:
            await pool.wait_ready(3, timeout=READY)
            sessions = ["a", "b", "c"]
            seen: dict[str, set[int]] = {s: set() for s in sessions}
            for _ in range(5):
                for session in sessions:
                    seen[session].add(await session_pid(pool, session))
                    await pool.call("echo", 1)  # anonymous traffic in between
            # One worker per session, and the fewest-sessions rule spread them.
            assert all(len(pids) == 1 for pids in seen.values()), seen
            assert len({next(iter(p)) for p in seen.values()}) == 3
            assert pool.statistics().sessions == 3
            pool.check_invariants()


async def test_session_lost_once_after_its_worker_dies_then_rebinds_empty() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            await pool.call("create_program", PROGRAM, session="s1")
            assert await program_count(pool, "s1") == 1
            pid = await session_pid(pool, "s1")
            with EventWaiter(("engine", "session", "lost"),
                             lambda m: m.get("session") == "s1") as lost:
                os.kill(pid, signal.SIGKILL)
                await lost.fired.wait()
            with pytest.raises(SessionLost) as info:
                await pool.call("list_programs", session="s1")
            assert info.value.session == "s1"
            # Reported once: the session is unbound, the next call starts afresh.
            assert await program_count(pool, "s1") == 0
            assert await session_pid(pool, "s1") != pid
            assert await program_count(pool, "s1") == 0
            pool.check_invariants()


def wait_dead(pid: int) -> None:
    """Block until ``pid`` (a child of this process) has died, without reaping it
    and without a Trio checkpoint: the pool's exit watcher cannot have run, so
    the pool has not noticed the death yet (the window a test wants open)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


async def test_a_sigkill_during_a_session_call_is_session_lost_once() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            await pool.call("create_program", PROGRAM, session="s1")
            pid = await session_pid(pool, "s1")
            caught: list[BaseException] = []

            async def call_in_flight() -> None:
                try:
                    await pool.call("sleep", {"seconds": 60}, session="s1")
                except BaseException as exc:
                    caught.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_in_flight)
                await trio.testing.wait_all_tasks_blocked()  # its request is written
                os.kill(pid, signal.SIGKILL)
            # Today's bug: WorkerCrashed here, SessionLost on the next call.
            [lost] = caught
            assert isinstance(lost, SessionLost), repr(lost)
            assert isinstance(lost.__cause__, engine.WorkerCrashed)
            assert await program_count(pool, "s1") == 0  # a fresh state at once
            assert await session_pid(pool, "s1") != pid
            pool.check_invariants()


async def test_a_session_used_right_after_a_sigkill_is_lost_exactly_once() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            for _ in range(3):
                await pool.call("create_program", PROGRAM, session="s1")
                pid = await session_pid(pool, "s1")
                os.kill(pid, signal.SIGKILL)
                # No checkpoint in between: the call races the death itself
                # (found at hand-off, or by the call's own read).
                with pytest.raises(SessionLost):
                    await pool.call("list_programs", session="s1")
                assert await program_count(pool, "s1") == 0
                assert await session_pid(pool, "s1") != pid
            pool.check_invariants()


async def test_end_session_right_after_a_sigkill_returns_normally() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            for ack in (False, True):
                await pool.call("create_program", PROGRAM, session="s1")
                pid = await session_pid(pool, "s1")
                os.kill(pid, signal.SIGKILL)
                if ack:
                    wait_dead(pid)  # dead for sure, still unnoticed
                assert await pool.end_session("s1") is False
                assert "s1" not in pool.inspect().bindings
                assert await program_count(pool, "s1") == 0  # fresh, no SessionLost
            pool.check_invariants()


async def test_wait_ready_right_after_a_sigkill_does_not_count_the_dead_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            pid = pool.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid)
            await pool.wait_ready(2, timeout=READY)
            assert pid not in pool.worker_pids()
            workers = [slot.worker for slot in pool.inspect().slots]
            assert all(w is not None and w.is_alive() for w in workers)


async def test_strict_affinity_waits_for_the_bound_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, affinity="strict") as pool:
            await pool.wait_ready(2, timeout=READY)
            pid = await session_pid(pool, "s1")
            async with pool.checkout(session="s1") as lease:
                assert lease.pid == pid
                # The other worker is free, but the session's state is not there.
                with pytest.raises(PoolTimeout):
                    await pool.call("ping", session="s1", checkout_timeout=0.2)
            assert await session_pid(pool, "s1") == pid


async def test_fail_fast_affinity_raises_worker_busy() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, affinity="fail_fast") as pool:
            await pool.wait_ready(2, timeout=READY)
            pid = await session_pid(pool, "s1")
            async with pool.checkout(session="s1"):
                with pytest.raises(WorkerBusy) as info:
                    await pool.call("ping", session="s1", checkout_timeout=5)
                assert info.value.session == "s1"
                assert pool.statistics().waiting == 0
            assert await session_pid(pool, "s1") == pid


async def test_hint_affinity_takes_another_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, affinity="hint") as pool:
            await pool.wait_ready(2, timeout=READY)
            pid = await session_pid(pool, "s1")
            async with pool.checkout(session="s1") as lease:
                assert lease.pid == pid
                assert await session_pid(pool, "s1") != pid
            # The binding itself did not move.
            assert await session_pid(pool, "s1") == pid


async def test_end_session_cleans_up_and_unbinds() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1) as pool:
            await pool.wait_ready(1, timeout=READY)
            await pool.call("create_program", PROGRAM, session="s1")
            await pool.call("create_program", PROGRAM, session="s2")
            assert pool.statistics().sessions == 2
            assert await pool.end_session("s1") is True
            assert "s1" not in pool.inspect().bindings
            assert pool.statistics().sessions == 1
            # Same (only) worker, but its state for s1 was dropped; s2 is untouched.
            assert await program_count(pool, "s1") == 0
            assert await program_count(pool, "s2") == 1
            assert await pool.end_session("never-used") is False


async def test_sessions_survive_other_workers_deaths() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=3) as pool:
            await pool.wait_ready(3, timeout=READY)
            await pool.call("create_program", PROGRAM, session="keep")
            keeper = await session_pid(pool, "keep")
            victims = [p for p in pool.worker_pids() if p != keeper]
            assert len(victims) == 2
            for victim in victims:
                with EventWaiter(("engine", "worker", "exit"),
                                 lambda m: "crashed" in str(m.get("reason"))) as exited:
                    os.kill(victim, signal.SIGKILL)
                    await exited.fired.wait()
            await pool.wait_ready(3, timeout=READY)
            assert pool.statistics().crashes == 2
            assert await session_pid(pool, "keep") == keeper
            assert await program_count(pool, "keep") == 1


async def test_health_checks_replace_a_frozen_idle_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, health_interval=0.2, health_timeout=0.2,
                                    max_health_failures=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            # The caller's session pins it to one worker (strict affinity), so it
            # is never handed the frozen one, even while a probe holds its own.
            mine = await session_pid(pool, "caller")
            frozen = next(p for p in pool.worker_pids() if p != mine)
            os.kill(frozen, signal.SIGSTOP)
            try:
                calls = 0
                while frozen in pool.worker_pids():
                    assert await session_pid(pool, "caller") == mine
                    calls += 1
                    await trio.sleep(0.05)  # pacing the caller, not synchronisation
                    assert calls < 1000, "the frozen worker was never replaced"
            finally:
                if pid_alive(frozen):
                    os.kill(frozen, signal.SIGCONT)
            await pool.wait_ready(2, timeout=READY)
            assert frozen not in pool.worker_pids()
            assert not pid_alive(frozen)
            stats = pool.statistics()
            assert stats.restarts >= 1
            assert await session_pid(pool, "caller") == mine  # never noticed


async def test_recycling_after_max_calls_per_worker() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, max_calls_per_worker=3) as pool:
            await pool.wait_ready(1, timeout=READY)
            pids = [(await pool.call("ping"))["pid"] for _ in range(7)]
            assert pids[0] == pids[1] == pids[2]
            assert pids[3] == pids[4] == pids[5] != pids[0]
            assert pids[6] not in (pids[0], pids[3])
            assert pool.statistics().restarts == 2
            assert pool.statistics().crashes == 0
            history = pool.inspect().slots[0].history
            assert any("recycled after 3 calls" in t.reason for t in history)


PARENT_SCRIPT = textwrap.dedent("""
    import json, sys, trio, engine

    async def main():
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=10)
            print(json.dumps(pool.worker_pids()), flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


async def test_parent_sigkill_leaves_no_worker_behind() -> None:
    with trio.fail_after(HANG_GUARD):
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", PARENT_SCRIPT], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert parent.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await parent.stdout.receive_some(4096)
                assert chunk, "the parent script exited before printing its workers"
                line += chunk
            workers = json.loads(line)
            assert len(workers) == 2 and all(pid_alive(p) for p in workers)
            parent.send_signal(signal.SIGKILL)
            await parent.wait()
        finally:
            if parent.returncode is None:
                parent.kill()
                await parent.wait()
            await parent.stdout.aclose()
        # The workers' watchdog sees the parent gone and exits on its own.
        await wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=2.0,
                         what="every orphaned worker gone")
