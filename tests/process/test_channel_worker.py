"""``ChannelWorker``: the start-up, stop and exit reporting real and fake workers share.

Layer 2: a bare subclass over memory streams, its "process" a background task
that writes real frames, so the base class's contract is checked on its own
(``ProcessWorker`` and the test kit's fakes exercise it again in their tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio
import trio.testing

from engine.errors import ProtocolError, WorkerCrashed, WorkerStartError
from engine.process.channel import FramedChannel
from engine.process.channel_worker import ChannelWorker
from engine.process.handle import ExitInfo
from engine.protocol import encode_frame, hello_message

pytestmark = pytest.mark.layer2

GUARD = 100.0  # virtual seconds (autojump clock): a hang fails the test
PID = 4242  # the process spawned (a launcher, say)
HELLO_PID = 4343  # the interpreter's own, as its hello says
ARGV = ("python", "-m", "engine.workers.runtime")


class BareWorker(ChannelWorker):
    """The least a subclass implements: kill and stop. Records what was asked."""

    def __init__(self) -> None:
        to_child, self.child_stdin = trio.testing.memory_stream_one_way_pair()
        self.child_stdout, from_child = trio.testing.memory_stream_one_way_pair()
        channel = FramedChannel(to_child, from_child, worker_id="bare-0.1",
                                max_frame_size=1 << 20, pid=lambda: PID)
        super().__init__("bare-0.1", channel, tail_lines=2, kind="bare process",
                         spawned_pid=PID, argv=ARGV)
        self.events: list[str] = []
        self.stops: list[float] = []
        self.process = trio.CancelScope()  # the "process" tasks run in it

    def kill(self) -> None:
        self.exits(ExitInfo(exit_code=None, signal=9, reason="killed"))

    async def stop(self, grace: float) -> ExitInfo:
        self.stops.append(grace)
        self.kill()
        info = self.exit_info
        assert info is not None
        return info

    def exits(self, info: ExitInfo, *, abort: bool = True) -> bool:
        if not self.record_exit(info, abort=abort):
            return False
        self.child_stdout.close()
        self.process.cancel()  # the "process" is gone: its tasks end
        return True

    # What the "process" may do (background tasks).

    async def says_hello(self) -> None:
        self.events.append(f"started, pid {self.pid}")
        with self.process:
            await self.child_stdout.send_all(
                encode_frame(hello_message("bare-0.1", HELLO_PID, "bare", [])))
            await trio.sleep_forever()

    async def crashes_before_hello(self) -> None:
        self.record_stderr_line("first")
        self.record_stderr_line("second")
        self.record_stderr_line("last words")
        self.exits(ExitInfo(exit_code=3, signal=None, reason="exited"), abort=False)

    async def says_garbage(self) -> None:
        with self.process:
            await self.child_stdout.send_all(encode_frame({"id": 0, "ok": True, "result": 1}))
            await trio.sleep_forever()

    async def says_nothing(self) -> None:
        with self.process:
            await trio.sleep_forever()


def lifetime(worker: BareWorker, *background: Callable[[], Awaitable[None]],
             grace: float = 2.0) -> AbstractAsyncContextManager[None]:
    return worker.running(start_timeout=5.0, grace=grace, background=background)


async def test_running_starts_tasks_reads_the_hello_then_stops_gracefully(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD):
        async with lifetime(worker, worker.says_hello, grace=1.5):
            worker.events.append(f"block, pid {worker.pid}")
            assert worker.ready and worker.hello.pid == HELLO_PID
            assert worker.is_alive() and worker.can_stop_gracefully
    # Before the hello the pid is the spawned process's, then the hello's.
    assert worker.events == [f"started, pid {PID}", f"block, pid {HELLO_PID}"]
    assert worker.stops == [1.5]  # clean, said hello: the grace given
    assert worker.exit_info is not None and not worker.is_alive()


async def test_a_dirty_worker_is_stopped_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD):
        async with lifetime(worker, worker.says_hello):
            with trio.move_on_after(1.0):
                await worker.call("echo", 1)  # never answered: cancelled in flight
            assert worker.dirty and not worker.can_stop_gracefully
    assert worker.stops == [0.0]


async def test_the_blocks_exception_comes_out_as_itself(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD), pytest.raises(KeyError, match="mine"):
        async with lifetime(worker, worker.says_hello):
            raise KeyError("mine")
    assert worker.stops == [2.0]  # stopped all the same


async def test_an_exit_before_the_hello_is_a_start_error_saying_how(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD), pytest.raises(WorkerStartError) as info:
        async with lifetime(worker, worker.crashes_before_hello):
            pytest.fail("no hello, no block")
    error = info.value
    assert "bare process exited with code 3 before its hello" in str(error)
    assert (error.pid, error.exit_code, error.signal) == (PID, 3, None)
    assert error.stderr_tail == ("second", "last words")  # tail_lines=2
    assert error.argv == ARGV
    assert worker.stops == [0.0]  # no hello: nobody to ask politely


async def test_a_bad_hello_is_a_start_error_caused_by_the_protocol_error(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD), pytest.raises(WorkerStartError, match="bad hello") as info:
        async with lifetime(worker, worker.says_garbage):
            pytest.fail("no hello, no block")
    assert isinstance(info.value.__cause__, ProtocolError)
    assert info.value.exit_code is None  # still running when the error was raised


async def test_no_hello_within_start_timeout(autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD), \
            pytest.raises(WorkerStartError, match="no hello within start_timeout=5s"):
        async with lifetime(worker, worker.says_nothing):
            pytest.fail("no hello, no block")
    assert trio.current_time() == pytest.approx(5.0)
    assert worker.stops == [0.0]


async def test_the_exit_is_recorded_once_and_wakes_the_call_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = BareWorker()
    with trio.fail_after(GUARD):
        async with lifetime(worker, worker.says_hello):
            crashed: list[WorkerCrashed] = []

            async def call() -> None:
                with pytest.raises(WorkerCrashed) as info:
                    await worker.call("hang")
                crashed.append(info.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                first = ExitInfo(exit_code=None, signal=15, reason="killed")
                assert worker.exits(first)
                assert not worker.record_exit(ExitInfo(exit_code=0, signal=None, reason="x"))
            assert worker.exit_info is first
            assert await worker.wait_exited() is first
            assert crashed[0].signal == 15 and crashed[0].command == "hang"
            assert not worker.can_stop_gracefully
