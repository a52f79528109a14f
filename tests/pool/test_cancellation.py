"""Cooperative cancellation (design section 8, issue 13).

A call cancelled (or past its ``call_timeout``) with its request in flight
raises ``Cancelled`` (``CallTimeout``) to its caller at once; the pool drains
the worker in the background (DRAINING) and gives it back READY, the same
process with every session on it, or kills it once ``cancel_grace`` has
passed. ``cancel_grace=0`` keeps the old behaviour (kill at once; see also
tests/pool/test_basic.py and tests/pool/test_deadlines.py).

Layer 2 runs over fake workers in virtual time (exact instants can be
asserted there); layer 3 over real processes and real signals, sequenced by
the ``block`` handler's start marker (a FIFO the test waits on) and by the
pool's own state, never by sleeps or wall-clock assertions.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
from engine.errors import CallTimeout, SessionLost
from engine.pool.contract import CheckinOutcome, DefaultPolicy, Remove, WorkerInfo
from engine.pool.lifecycle import WorkerState
from engine.pool.pool import Pool
from engine.testing.fakes import FakeWorkerFactory, Script
from tests.leaks import pid_alive

S = WorkerState
VIRTUAL_GUARD = 1000.0  # virtual seconds: a hang fails instead of stalling
HANG_GUARD = 30.0  # real seconds, generous: a hang fails, never a timing assertion
APP = "tests.apps.cancellable"


def transitions(seen: list[telemetry.CapturedEvent], slot: int = 0) -> list[tuple[str, str]]:
    return [(c.metadata["old"], c.metadata["new"]) for c in seen
            if c.event == telemetry.WORKER_TRANSITION and c.metadata["slot"] == slot]


def drained(seen: list[telemetry.CapturedEvent]) -> list[dict[str, Any]]:
    return [dict(c.metadata) for c in seen if c.event == telemetry.WORKER_DRAINED]


# --- layer 2: fake workers, virtual time -----------------------------------------------


@asynccontextmanager
async def fake_pool(script: Script | None = None, **config: Any) \
        -> AsyncIterator[tuple[Pool, FakeWorkerFactory]]:
    factory = FakeWorkerFactory(script or Script())
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, **{"size": 1, **config}) as pool:
            await pool.wait_ready()
            yield pool, factory


async def cancel_after(pool: Pool, seconds: float, command: str, args: Any,
                       session: str | None = None) -> float:
    """Call, cancel after ``seconds``; returns the virtual time the caller got back."""
    with trio.move_on_after(seconds) as scope:
        await pool.call(command, args, session=session)
    assert scope.cancelled_caught
    return trio.current_time()


@pytest.mark.layer2
async def test_fake_cancelled_call_keeps_the_worker_and_its_sessions(
        autojump_clock: trio.testing.MockClock) -> None:
    async with fake_pool() as (pool, factory):
        await pool.call("create_program", {"id": "pb"}, session="b")
        await pool.call("create_program", {"id": "pa"}, session="a")
        [worker] = factory.alive
        with telemetry.capture() as seen:
            began = trio.current_time()
            back = await cancel_after(pool, 1.0, "sleep", {"seconds": 50}, session="a")
            assert back == began + 1.0  # the caller is not held up by the drain
            # The next call of session b is served by the same worker, with its state.
            listed = await pool.call("list_programs", session="b")
        assert [p["id"] for p in listed["programs"]] == ["pb"]
        listed = await pool.call("list_programs", session="a")
        assert [p["id"] for p in listed["programs"]] == ["pa"]
        assert factory.alive == [worker] and pool.statistics().restarts == 0
        assert ("busy", "draining") in transitions(seen)
        assert ("draining", "ready") in transitions(seen)
        [event] = drained(seen)
        assert event["outcome"] == "clean" and event["worker_id"] == worker.worker_id
        assert pool.metrics().counters["drains_clean"] == 1
        pool.check_invariants()


@pytest.mark.layer2
async def test_fake_call_timeout_keeps_the_worker(
        autojump_clock: trio.testing.MockClock) -> None:
    async with fake_pool(call_timeout=2.0) as (pool, factory):
        await pool.call("create_program", {"id": "pb"}, session="b")
        began = trio.current_time()
        with pytest.raises(CallTimeout):
            await pool.call("sleep", {"seconds": 50}, session="a")
        assert trio.current_time() == began + 2.0
        assert len(factory.workers) == 1
        listed = await pool.call("list_programs", session="b")
        assert [p["id"] for p in listed["programs"]] == ["pb"]


@pytest.mark.layer2
@pytest.mark.parametrize("cancel_grace", [0.5, 0.0])
async def test_fake_reply_arriving_with_its_deadline_keeps_the_worker_and_the_session(
        autojump_clock: trio.testing.MockClock, cancel_grace: float) -> None:
    """A reply that comes in the same instant as the call's deadline (the handler
    sleeps exactly the timeout): the call ends with CallTimeout "late" (the
    answer never depends on scheduling), but the reply was read, so nothing of
    the call is left on the pipe: the worker is kept with its sessions, even
    with cancel_grace=0, and the session is not reported lost (found by a
    new-user audit: 10 of 40 such calls raised SessionLost and unbound it)."""
    async with fake_pool(cancel_grace=cancel_grace) as (pool, factory):
        await pool.call("create_program", {"id": "pa"}, session="a")
        [worker] = factory.workers
        for _ in range(5):
            with pytest.raises(CallTimeout) as caught:
                await pool.call("sleep", {"seconds": 1.0}, session="a", timeout=1.0)
            assert caught.value.outcome == "late", caught.value
            assert "reply was dropped and the worker is kept" in str(caught.value)
            listed = await pool.call("list_programs", session="a")
            assert [p["id"] for p in listed["programs"]] == ["pa"]
        assert factory.workers == [worker] and pool.statistics().restarts == 0
        assert pool.statistics().draining == 0


@pytest.mark.layer2
@pytest.mark.parametrize(("script", "kept"), [
    (Script(abandon_delay=0.4), True),  # gives the request back within the grace
    (Script(abandon_delay=0.6), False),  # too late
    (Script(on_abandon="never"), False),  # never
])
async def test_fake_worker_is_killed_only_when_the_grace_ends_first(
        autojump_clock: trio.testing.MockClock, script: Script, kept: bool) -> None:
    async with fake_pool(script, cancel_grace=0.5) as (pool, factory):
        await pool.call("echo", 1, session="b")
        [first] = factory.workers
        with telemetry.capture() as seen:
            back = await cancel_after(pool, 1.0, "sleep", {"seconds": 50})
            # Back at once, while the worker still drains: not delayed by it.
            assert pool.statistics().draining == 1
            assert pool.inspect().slots[0].state is S.DRAINING
            assert pool.inspect().slots[0].lease is None
            await pool.wait_until(lambda v: v.slots[0].state is S.READY)
        [event] = drained(seen)
        if kept:
            assert event["outcome"] == "clean"
            assert trio.current_time() == back + 0.4
            assert factory.alive == [first]
            assert await pool.call("echo", 2, session="b") == 2
        else:
            assert event["outcome"] == "killed"
            assert "cancel_grace=0.5s" in event["reason"]
            assert first.exit_info is not None  # killed when the grace ended
            assert len(factory.workers) == 2
            with pytest.raises(SessionLost):
                await pool.call("echo", 2, session="b")


@pytest.mark.layer2
async def test_fake_a_stale_reply_never_reaches_the_next_caller(
        autojump_clock: trio.testing.MockClock) -> None:
    """A stubborn handler finishes within the grace: its normal reply is read
    and dropped by the drain; the next caller, queued meanwhile, gets its own."""
    async with fake_pool(cancel_grace=5.0) as (pool, factory):
        answers: list[Any] = []

        async def next_caller() -> None:
            answers.append(await pool.call("echo", "mine", session="b"))

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(1.0):
                await pool.call("sleep", {"seconds": 2, "stubborn": True}, session="b")
            nursery.start_soon(next_caller)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().waiting == 1  # not granted while draining
        assert answers == ["mine"]
        assert trio.current_time() >= 2.0  # served only after the stale reply
        assert len(factory.workers) == 1


@pytest.mark.layer2
async def test_fake_the_next_call_on_the_same_lease_drains_first(
        autojump_clock: trio.testing.MockClock) -> None:
    async with fake_pool() as (pool, factory):
        async with pool.checkout(session="a") as lease:
            with trio.move_on_after(1.0):
                await lease.call("sleep", {"seconds": 50})
            assert await lease.call("echo", "after") == "after"
        assert len(factory.workers) == 1 and pool.statistics().ready == 1


@pytest.mark.layer2
async def test_fake_cancel_grace_0_kills_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with fake_pool(cancel_grace=0) as (pool, factory):
        await pool.call("echo", 1, session="b")
        with telemetry.capture() as seen:
            await cancel_after(pool, 1.0, "sleep", {"seconds": 50})
        assert not drained(seen)
        assert ("busy", "draining") not in transitions(seen)
        with pytest.raises(SessionLost):
            await pool.call("echo", 2, session="b")
        assert factory.workers[0].exit_info is not None


class _Watching(DefaultPolicy):
    """A custom policy on the default's rules; sees every check-in."""

    def __init__(self, veto: bool) -> None:
        self.veto = veto
        self.outcomes: list[CheckinOutcome] = []

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any:
        self.outcomes.append(outcome)
        if self.veto and outcome.draining:
            return Remove("this policy kills workers whose call was given up")
        return super().on_checkin(worker, outcome)


@pytest.mark.layer2
@pytest.mark.parametrize("veto", [False, True])
async def test_fake_a_custom_policy_sees_the_drain_and_may_veto_it(
        autojump_clock: trio.testing.MockClock, veto: bool) -> None:
    policy = _Watching(veto)
    async with fake_pool(policy=policy) as (pool, factory):
        await cancel_after(pool, 1.0, "sleep", {"seconds": 50})
        [outcome] = policy.outcomes
        assert outcome.draining and not outcome.clean
        await pool.call("echo", 1)
        assert len(factory.workers) == (2 if veto else 1)


@pytest.mark.layer2
async def test_fake_close_while_draining_waits_at_most_the_grace(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script(on_abandon="never"))
    with trio.fail_after(VIRTUAL_GUARD):
        async with engine.open_pool(worker_factory=factory, size=2, cancel_grace=3.0,
                                    shutdown_grace=0.0) as pool:
            await pool.wait_ready()
            back = await cancel_after(pool, 1.0, "sleep", {"seconds": 50})
            assert pool.statistics().draining == 1
        assert trio.current_time() <= back + 3.0 + factory.grace
    assert not factory.unreaped


# --- layer 3: real workers and signals ---------------------------------------------------


class StartMarker:
    """A FIFO the ``block`` handler writes ``started <tag>`` to; the test awaits it."""

    def __init__(self, directory: Path, name: str = "started") -> None:
        self.path = str(directory / name)
        os.mkfifo(self.path)
        self._read = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reading as EOF between handlers.
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self._lines: list[str] = []
        self._partial = b""

    async def wait(self, tag: str) -> None:
        while f"started {tag}" not in self._lines:
            try:
                data = os.read(self._read, 4096)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._read)
                continue
            *lines, self._partial = (self._partial + data).split(b"\n")
            self._lines.extend(line.decode() for line in lines)

    def close(self) -> None:
        os.close(self._read)
        os.close(self._keep)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[StartMarker]:
    m = StartMarker(tmp_path)
    yield m
    m.close()


async def pid_of(pool: Pool, session: str | None = None) -> int:
    answer = await pool.call("ping", session=session)
    return int(answer["pid"])


async def block_then_cancel(pool: Pool, marker: StartMarker, tag: str, *, session: str,
                            stubborn: bool = False) -> None:
    """Session ``session`` calls ``block``; once its handler has started, cancel it."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        got: list[str] = []

        async def caller() -> None:
            with scope:
                await pool.call("block", {"marker": marker.path, "tag": tag,
                                          "stubborn": stubborn}, session=session)
            got.append("cancelled" if scope.cancelled_caught else "returned")

        nursery.start_soon(caller)
        await marker.wait(tag)
        scope.cancel()
    assert got == ["cancelled"]


@pytest.mark.layer3
async def test_a_cancelled_call_keeps_session_b_and_the_worker_pid(marker: StartMarker) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            assert await pool.call("remember", "b's state", session="b") == "b's state"
            await pool.call("remember", "a's state", session="a")
            pid = await pid_of(pool)
            with telemetry.capture() as seen:
                await block_then_cancel(pool, marker, "a1", session="a")
                assert await pool.call("recall", session="b") == "b's state"
            assert await pool.call("recall", session="a") == "a's state"
            assert await pid_of(pool, session="a") == pid and pool.worker_pids() == [pid]
            stats = pool.statistics()
            assert stats.restarts == 0 and stats.crashes == 0 and stats.draining == 0
            assert ("busy", "draining") in transitions(seen)
            assert ("draining", "ready") in transitions(seen)
            [event] = drained(seen)
            assert event["outcome"] == "clean" and event["pid"] == pid
            assert event["reason"] == "abandoned request cancelled"  # interrupted
            pool.check_invariants()


@pytest.mark.layer3
async def test_a_call_timeout_keeps_session_b_and_the_worker_pid(marker: StartMarker) -> None:
    """The pool timer's expiry of a call (``deadline_passed``, what ``call_timeout``
    does) once its handler runs: CallTimeout at once, the worker kept."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            await pool.call("remember", "b's state", session="b")
            pid = await pid_of(pool)
            outcome: list[BaseException] = []

            async def caller(lease: Any) -> None:
                try:
                    await lease.call("block", {"marker": marker.path, "tag": "t1"},
                                     timeout=HANG_GUARD)
                except CallTimeout as exc:
                    outcome.append(exc)

            async with pool.checkout(session="a") as lease:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(caller, lease)
                    await marker.wait("t1")
                    lease.deadline_passed()  # what the pool's timer does on expiry
            [timeout] = outcome
            assert isinstance(timeout, CallTimeout) and timeout.pid == pid
            assert await pool.call("recall", session="b") == "b's state"
            assert await pid_of(pool) == pid and pool.statistics().restarts == 0


@pytest.mark.layer3
async def test_a_handler_that_blocks_the_interrupt_is_killed_after_the_grace(
        marker: StartMarker) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1, cancel_grace=0.5) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            await pool.call("remember", "b's state", session="b")
            pid = await pid_of(pool)
            with telemetry.capture() as seen:
                await block_then_cancel(pool, marker, "s1", session="a", stubborn=True)
                # The caller is back while the worker still drains: it was not
                # delayed by the grace.
                assert pool.statistics().draining == 1
                with pytest.raises(SessionLost):
                    await pool.call("recall", session="b")
            assert await pid_of(pool) != pid
            assert not pid_alive(pid)
            [event] = drained(seen)
            assert event["outcome"] == "killed" and event["pid"] == pid
            assert "did not give request" in event["reason"]
            assert "cancel_grace=0.5s" in event["reason"]
            assert pool.statistics().restarts == 1


@pytest.mark.layer3
async def test_cancel_grace_0_kills_at_once(marker: StartMarker) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1, cancel_grace=0) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            await pool.call("remember", "b's state", session="b")
            pid = await pid_of(pool)
            with telemetry.capture() as seen:
                await block_then_cancel(pool, marker, "z1", session="a")
                with pytest.raises(SessionLost):
                    await pool.call("recall", session="b")
            assert not drained(seen)
            assert await pid_of(pool) != pid


@pytest.mark.layer3
async def test_the_next_call_on_the_same_lease_waits_for_the_drain(
        marker: StartMarker) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            pid = await pid_of(pool)
            async with pool.checkout(session="a") as lease:
                await lease.call("remember", "kept")
                async with trio.open_nursery() as nursery:
                    scope = trio.CancelScope()

                    async def caller() -> None:
                        with scope:
                            await lease.call("block", {"marker": marker.path, "tag": "l1"})

                    nursery.start_soon(caller)
                    await marker.wait("l1")
                    scope.cancel()
                assert await lease.call("recall") == "kept"
                assert lease.pid == pid
            assert pool.statistics().restarts == 0


@pytest.mark.layer3
async def test_a_draining_worker_killed_by_a_signal_is_reported_as_killed(
        marker: StartMarker) -> None:
    """A worker SIGKILLed while it drains: its exit is reported with the signal
    (what the stress runner's ledger and an operator read), not as the drain's
    "went away" (the pipe's EOF can beat the process's exit to the drain task,
    which then stopped the worker as if the pool had removed it)."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1, cancel_grace=HANG_GUARD) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            pid = await pid_of(pool)
            with telemetry.capture() as seen:
                await block_then_cancel(pool, marker, "k1", session="a", stubborn=True)
                assert pool.statistics().draining == 1
                os.kill(pid, signal.SIGKILL)
                assert await pid_of(pool) != pid  # served by the replacement
            [exit_event] = [c.metadata for c in seen if c.event == telemetry.WORKER_EXIT]
            assert exit_event["reason"] == f"crashed: signal {int(signal.SIGKILL)}", exit_event
            assert exit_event["signal"] == int(signal.SIGKILL)
            [event] = drained(seen)
            assert event["outcome"] == "killed" and event["pid"] == pid


@pytest.mark.layer3
async def test_closing_with_a_stubborn_worker_draining_kills_it(marker: StartMarker) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=1, cancel_grace=0.5,
                                    shutdown_grace=0) as pool:
            await pool.wait_ready(1, timeout=HANG_GUARD)
            pid = await pid_of(pool)
            await block_then_cancel(pool, marker, "c1", session="a", stubborn=True)
            assert pool.statistics().draining == 1
        assert not pid_alive(pid)
