"""ProcessWorker against real worker subprocesses (layer 3).

Each test opens one worker with ``open_process_worker`` and checks what the pool
relies on: the hello, calls, typed errors, the dirty flag after interrupted
calls, start failures with their stderr tail, and that nothing survives the
worker (its process group, grandchildren included, is killed and reaped).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import pytest
import trio
import trio.testing

from engine.errors import (
    CallTimeout,
    ProtocolError,
    RemoteError,
    WorkerCrashed,
    WorkerStartError,
)
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

APP = "engine.workers.programs"
HANG_GUARD = 10.0  # generous: only there so a bug fails the test instead of hanging it


def request(app: str = APP, worker_id: str = "t-0.1", start_timeout: float = 10.0,
            **kw: object) -> SpawnRequest:
    return SpawnRequest(worker_id=worker_id, app=app, start_timeout=start_timeout, **kw)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll an external (OS or stream) condition with a deadline."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - no event exists for an OS condition
            await trio.sleep(0.01)
        return
    raise AssertionError(f"{what} not reached within {timeout}s")


async def test_hello_fields_and_round_trip() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request(worker_id="hello-0.1")) as worker:
            hello = worker.hello
            assert hello.protocol == 1
            assert hello.worker_id == "hello-0.1"
            assert hello.pid == worker.os_pid == worker.pid
            assert hello.app == "programs"
            for command in ("echo", "sleep", "crash", "ping", "health", "shutdown"):
                assert command in hello.commands
            assert worker.is_alive() and not worker.dirty and worker.exit_info is None
            assert await worker.call("echo", {"x": [1, "two", None]}) == {"x": [1, "two", None]}
            ping = await worker.call("ping")
            assert ping["pid"] == worker.os_pid and ping["worker_id"] == "hello-0.1"
        # Leaving the block stopped it gracefully (shutdown command -> exit 0).
        assert worker.exit_info is not None and worker.exit_info.exit_code == 0
        assert not pid_alive(worker.os_pid)


async def test_remote_errors_keep_the_worker_alive() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            with pytest.raises(RemoteError) as info:
                await worker.call("fail", {"message": "boom"})
            assert "boom" in info.value.remote_message
            assert info.value.traceback
            assert info.value.command == "fail"
            with pytest.raises(RemoteError) as info:
                await worker.call("no_such_command")
            assert info.value.type == "UnknownCommand"
            # A typo gets a suggestion among the app's own commands, which are
            # listed apart from the built-ins (new-user audit).
            with pytest.raises(RemoteError) as typo:
                await worker.call("ecko", 1)
            assert "unknown command 'ecko' for app 'programs' (did you mean 'echo'?)" \
                in str(typo.value)
            assert "(besides the built-in ping, health, stats, cleanup_session, shutdown)" \
                in str(typo.value)
            assert worker.is_alive() and not worker.dirty
            assert await worker.call("echo", 5) == 5


async def test_noise_does_not_break_framing_and_reaches_stderr_tail() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            await worker.call("noise", {"text": "noise-marker-42"})
            assert await worker.call("echo", "after noise") == "after noise"
            await wait_until(lambda: any("noise-marker-42" in line
                                         for line in worker.stderr_tail()),
                             what="the printed line in stderr_tail()")
            assert not worker.dirty


async def test_crash_mid_call_raises_worker_crashed_with_exit_code() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request(worker_id="crash-0.1")) as worker:
            pid = worker.os_pid
            with pytest.raises(WorkerCrashed) as info:
                await worker.call("crash", {"code": 7})
            assert info.value.exit_code == 7
            assert info.value.signal is None
            assert info.value.worker_id == "crash-0.1" and info.value.pid == pid
            assert info.value.command == "crash"
            assert not worker.is_alive()
            assert worker.exit_info is not None and worker.exit_info.exit_code == 7
            # The next call on the dead worker fails the same typed way, at once.
            with pytest.raises(WorkerCrashed):
                await worker.call("echo", 1)


async def test_call_timeout_on_hang_leaves_worker_dirty() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            with pytest.raises(CallTimeout) as info:
                await worker.call("hang", {}, timeout=0.2)
            assert info.value.timeout == 0.2 and info.value.command == "hang"
            assert worker.dirty
        # A dirty worker is killed, not asked to shut down.
        assert worker.exit_info is not None and worker.exit_info.signal == signal.SIGKILL


async def test_cancel_in_flight_leaves_dirty() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await worker.call("sleep", {"seconds": 30})

                nursery.start_soon(caller)
                # Once every task is blocked, the request is written and the call
                # waits for the reply.
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert worker.dirty
                scope.cancel()
            assert scope.cancelled_caught
            assert worker.dirty


async def test_cancel_before_write_leaves_clean() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            with trio.CancelScope() as scope:
                scope.cancel()
                await worker.call("echo", "never sent")
            assert scope.cancelled_caught
            assert not worker.dirty
            # Nothing was written: the next call gets its own reply.
            assert await worker.call("echo", "next") == "next"
            assert not worker.dirty


async def test_start_error_for_missing_app_module() -> None:
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError) as info:
            async with open_process_worker(request(app="no.such.module")):
                pytest.fail("a worker whose app can't be imported must not start")
    error = info.value
    assert error.worker_id == "t-0.1"
    assert any("No module named" in line for line in error.stderr_tail), error.stderr_tail
    assert error.exit_code not in (None, 0)
    assert "no.such.module" in str(error)
    assert error.pid is not None and not pid_alive(error.pid)


async def test_start_error_for_app_that_raises_at_import() -> None:
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError) as info:
            async with open_process_worker(request(app="tests.apps.always_fails")):
                pytest.fail("must not start")
    assert any("always_fails" in line for line in info.value.stderr_tail)


async def test_start_timeout_reports_stderr_tail() -> None:
    # A launcher that talks and then never starts Python: a start timeout.
    launcher = ("sh", "-c", 'echo "launcher: waiting forever" >&2; sleep 30; exec "$@"', "sh")
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError) as info:
            async with open_process_worker(request(start_timeout=1.0, launcher=launcher)):
                pytest.fail("must not start")
    error = info.value
    assert "start_timeout" in error.reason
    assert any("waiting forever" in line for line in error.stderr_tail), error.stderr_tail
    assert error.pid is not None and not pid_alive(error.pid)


async def test_slow_app_import_is_a_start_timeout() -> None:
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError) as info:
            async with open_process_worker(request(app="tests.apps.slow_start",
                                                   start_timeout=1.0)):
                pytest.fail("must not start")
    assert "start_timeout" in info.value.reason


async def test_garbage_is_a_protocol_error() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            with pytest.raises(ProtocolError) as info:
                # A huge announced length: rejected before any allocation.
                await worker.call("garbage", {"data": "\x7f\xff\xff\xffjunk"})
            assert info.value.worker_id == "t-0.1"
            assert worker.dirty and not worker.is_alive()


async def test_sigkill_during_call_raises_worker_crashed_with_signal() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            async with trio.open_nursery() as nursery:
                errors: list[BaseException] = []

                async def caller() -> None:
                    try:
                        await worker.call("sleep", {"seconds": 30})
                    except WorkerCrashed as exc:
                        errors.append(exc)

                nursery.start_soon(caller)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                os.kill(worker.os_pid, signal.SIGKILL)
            assert len(errors) == 1
            crashed = errors[0]
            assert isinstance(crashed, WorkerCrashed)
            assert crashed.signal == signal.SIGKILL and crashed.exit_code is None
            assert crashed.command == "sleep"


@pytest.mark.parametrize("how", ["stop", "kill_group", "kill_worker_only"])
async def test_grandchild_dies_with_the_worker(how: str) -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            child = (await worker.call("spawn_child", {"seconds": 60}))["child_pid"]
            assert pid_alive(child)
            if how == "kill_group":
                worker.kill()
                await worker.wait_exited()
            elif how == "kill_worker_only":
                # Only the worker: the pool must still take its group down.
                os.kill(worker.os_pid, signal.SIGKILL)
                await worker.wait_exited()
        await wait_until(lambda: not pid_alive(child), timeout=5.0,
                         what=f"grandchild {child} gone")
        assert not pid_alive(worker.os_pid)


async def test_the_worker_leads_its_own_process_group_in_the_callers_session() -> None:
    # Its own group: the pool signals the worker and its children as a whole,
    # and a Ctrl-C at the terminal (the foreground group) does not reach it.
    # The caller's session: under autogroup scheduling a session is a CPU
    # group, and a worker in one of its own starves its parent under load.
    with trio.fail_after(HANG_GUARD):
        async with open_process_worker(request()) as worker:
            pid = worker.os_pid
            assert os.getpgid(pid) == pid != os.getpgrp()
            assert os.getsid(pid) == os.getsid(0)


async def test_spawn_of_missing_executable_is_a_start_error() -> None:
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError):
            async with open_process_worker(request(python=("/nonexistent/python",))):
                pytest.fail("must not start")


def test_python_path_is_this_interpreter() -> None:
    from engine.process.spawn import build_argv

    argv = build_argv(request(launcher=("x", "y")))
    assert argv[:3] == ["x", "y", sys.executable]


async def test_cancelling_the_scope_around_a_running_worker_reaps_it() -> None:
    # The exit watcher is cancelled along with the block: the shielded stop
    # must still reap the process itself (it used to wait for the watcher forever).
    with trio.CancelScope() as scope:
        async with open_process_worker(request()) as worker:
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert worker.exit_info is not None
    assert not pid_alive(worker.os_pid)


async def test_cancelling_a_start_reaps_the_process() -> None:
    with trio.move_on_after(0.5) as scope:
        async with open_process_worker(request(app="tests.apps.slow_start")):
            pytest.fail("must not start")
    assert scope.cancelled_caught
    # The autouse fixture checks that no child process is left behind.


async def test_write_to_a_dead_peer_is_peer_gone_not_broken_resource() -> None:
    # The worker died before reading the request: the write fails with EPIPE.
    # The channel must report PeerGone (the owner's WorkerCrashed), never leak
    # trio.BrokenResourceError to the caller.
    from engine.process.channel import FramedChannel, PeerGone

    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    os.close(request_r)  # nobody will ever read the request
    send = trio.lowlevel.FdStream(request_w)
    receive = trio.lowlevel.FdStream(reply_r)
    try:
        channel = FramedChannel(send, receive, worker_id="dead-0.1", max_frame_size=1 << 20)
        with pytest.raises(PeerGone):
            await channel.call("echo", 1)
        assert channel.broken
        with pytest.raises(PeerGone):
            await channel.call("echo", 2)
    finally:
        await send.aclose()
        await receive.aclose()
        os.close(reply_w)
