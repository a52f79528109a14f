"""Layer 3: every error path of the pool, with the exception's type and fields (issue 5)."""

from __future__ import annotations

import os
import signal

import pytest
import trio
import trio.testing

import engine
from engine import client
from engine.client.shapes import parse_program_list
from engine.errors import (
    AppStartFailed,
    BridgeUnavailable,
    CallTimeout,
    EngineError,
    LeaseReleased,
    PoolClosed,
    PoolSaturated,
    PoolTimeout,
    ProtocolError,
    RemoteError,
    ResponseShapeError,
    RetriesExhausted,
    SessionLost,
    WorkerBusy,
    WorkerCrashed,
    WorkerStartError,
)
from engine.pool.resilience import Retry

pytestmark = pytest.mark.layer3


def one_line(error: EngineError) -> None:
    assert str(error) and "\n" not in str(error)


async def test_worker_side_errors_carry_their_fields() -> None:
    async with engine.open_pool(size=2, call_timeout=5, restart_backoff=(0.01, 0.05, 1.0)) \
            as pool:
        await pool.wait_ready(2, timeout=20)

        with pytest.raises(RemoteError) as remote:
            await pool.call("fail", {"message": "boom"})
        assert (remote.value.type, remote.value.remote_message) == ("RuntimeError", "boom")
        assert isinstance(remote.value, RuntimeError)  # a built-in type comes back as itself
        assert remote.value.command == "fail" and "Traceback" in (remote.value.traceback or "")
        one_line(remote.value)

        with pytest.raises(RemoteError) as unknown:
            await pool.call("no_such_command")
        assert unknown.value.type == "UnknownCommand"

        with pytest.raises(WorkerCrashed) as crashed:
            await pool.call("crash", {"code": 9})
        error = crashed.value
        assert (error.exit_code, error.signal, error.command) == (9, None, "crash")
        assert error.worker_id and error.pid
        one_line(error)
        await pool.wait_ready(2, timeout=20)

        async with pool.checkout() as lease:
            target = lease.pid
            assert target is not None
            async with trio.open_nursery() as nursery:
                async def kill_soon() -> None:
                    # Once every task is blocked, the request has been written
                    # and the caller waits for the reply: the call is in flight.
                    await trio.testing.wait_all_tasks_blocked()
                    os.kill(target, signal.SIGKILL)
                nursery.start_soon(kill_soon)
                with pytest.raises(WorkerCrashed) as killed:
                    await lease.call("sleep", {"seconds": 30})
        assert killed.value.signal == signal.SIGKILL and killed.value.exit_code is None
        await pool.wait_ready(2, timeout=20)

        with pytest.raises(CallTimeout) as timeout:
            await pool.call("hang", timeout=0.3)
        assert timeout.value.timeout == 0.3 and timeout.value.command == "hang"
        one_line(timeout.value)

        with pytest.raises(ProtocolError) as protocol:
            await pool.call("garbage", {"data": "not a frame at all"})
        assert protocol.value.worker_id is not None
        one_line(protocol.value)

        async with pool.checkout() as lease:
            pass
        with pytest.raises(LeaseReleased) as released:
            await lease.call("ping")
        assert isinstance(released.value, trio.ClosedResourceError)
        assert released.value.worker_id == lease.worker_id

        attempts: list[int] = []
        async def always_crash(attempt: int) -> None:
            attempts.append(attempt)
            await pool.call("crash", {"code": 1})
        with pytest.raises(RetriesExhausted) as exhausted:
            await Retry(attempts=2, base_delay=0.01).run(always_crash)
        assert exhausted.value.attempts == 2 == len(attempts)
        assert isinstance(exhausted.value.__cause__, WorkerCrashed)


async def test_pool_side_errors_carry_their_fields() -> None:
    async with engine.open_pool(size=1, max_waiters=1, affinity="fail_fast",
                                restart_backoff=(0.01, 0.05, 1.0)) as pool:
        await pool.wait_ready(1, timeout=20)
        await pool.call("ping", session="s1")
        async with pool.checkout(session="s1"):
            with pytest.raises(WorkerBusy) as busy:
                await pool.call("ping", session="s1")
            assert busy.value.session == "s1" and busy.value.worker_id
            with pytest.raises(PoolTimeout) as timed_out:
                await pool.call("ping", checkout_timeout=0.2)
            assert timed_out.value.timeout == pytest.approx(0.2)
            one_line(timed_out.value)
            async with trio.open_nursery() as nursery:
                waiting = trio.Event()

                async def first_waiter() -> None:
                    waiting.set()
                    with pytest.raises(PoolTimeout):
                        await pool.call("ping", checkout_timeout=1.0)
                nursery.start_soon(first_waiter)
                await waiting.wait()
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(PoolSaturated) as saturated:
                    await pool.call("ping")
                assert saturated.value.max_waiters == 1
        worker_pid = pool.worker_pids()[0]
        os.kill(worker_pid, signal.SIGKILL)
        await pool.wait_ready(1, timeout=20)
        while pool.worker_pids() == [worker_pid]:  # the replacement is up
            await pool.wait_ready(1, timeout=20)
        with pytest.raises(SessionLost) as lost:
            await pool.call("ping", session="s1")
        assert lost.value.session == "s1" and "crashed" in lost.value.reason
        assert (await pool.call("ping", session="s1"))["pid"] != worker_pid
    with pytest.raises(PoolClosed):
        await pool.call("ping")


async def test_start_and_discovery_errors_carry_their_fields() -> None:
    async with engine.open_pool(app="no.such.module", size=1, start_timeout=5,
                                restart_backoff=(0.5, 1.0, 1.0)) as pool:
        with pytest.raises(AppStartFailed) as not_ready:
            await pool.wait_ready(1, timeout=2)
        assert not_ready.value.app == "no.such.module"
        assert not_ready.value.remote_type == "ModuleNotFoundError"
        assert isinstance(not_ready.value.__cause__, WorkerStartError)
        one_line(not_ready.value)
        start_error = pool.inspect().last_start_error
        assert isinstance(start_error, WorkerStartError)
        assert "no.such.module" in start_error.reason and start_error.argv
        one_line(start_error)
    with pytest.raises(BridgeUnavailable) as unavailable:
        await client.execute("ping", service="nobody-registered-this")
    assert str(unavailable.value).startswith("Python bridge not available:")
    with pytest.raises(ResponseShapeError) as shape:
        parse_program_list({"programs": [], "total_count": 2})
    assert shape.value.what and "total_count" in shape.value.problem


def test_session_lost_names_its_worker_once() -> None:
    """A reason written for logs ("worker w1 did not give ... back") is not
    prefixed with the worker a second time (new-user audit)."""
    lost = SessionLost(session="s", worker_id="w1",
                       reason="worker w1 did not give request 7 ('x') back within "
                              "cancel_grace=1s")
    assert "worker w1 did not give request 7" in str(lost)
    assert str(lost).count("w1") == 1
    assert lost.reason.startswith("did not give")
    other = SessionLost(session="s", worker_id="w1", reason="worker w2 vanished")
    assert "worker w1 worker w2 vanished" in str(other)  # another worker's name stays


def test_app_start_failed_advice_fits_where_the_worker_runs() -> None:
    """A remote worker gets no sys.path from here: its advice says where to
    look instead; a worker that said nothing shows its last stderr line in
    the headline (second new-user audit: ssh's "Connection refused" was only
    in the cause)."""
    said = "cannot load app 'myapp': ModuleNotFoundError: No module named 'myapp'"
    remote = WorkerStartError("bad hello", worker_id="w", launcher="ssh",
                              remote_type="ModuleNotFoundError", remote_message=said)
    text = str(AppStartFailed(last=remote, app="myapp", failures=2, pool="p"))
    assert "on the far end of launcher 'ssh' (remote workers get no sys.path from here" in text
    assert "they get the parent's sys.path" not in text
    local = WorkerStartError("bad hello", worker_id="w", remote_type="ModuleNotFoundError",
                             remote_message=said)
    assert "(they get the parent's sys.path)" in str(
        AppStartFailed(last=local, app="myapp", failures=2, pool="p"))
    silent = WorkerStartError("process exited with code 255 before its hello",
                              worker_id="w", launcher="ssh",
                              stderr_tail=("ssh: connect to host h port 1: Connection refused",))
    assert str(AppStartFailed(last=silent, app="myapp", failures=1, pool="p")).startswith(
        "process exited with code 255 before its hello (last stderr: 'ssh: connect to host h "
        "port 1: Connection refused')")
