"""Byte transports: abort wakes the operation in flight, and only that one.

Layer 2: real pipe fds in the Trio run, no worker process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from engine.process.transport import PeerGone, PipeTransport, StreamTransport, Transport


@pytest.fixture
def pipe() -> Iterator[tuple[int, int, PipeTransport]]:
    """A pipe (non-blocking read end) and a PipeTransport over it."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        yield read_fd, write_fd, PipeTransport(write_fd, read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def _read_until_gone(transport: Transport, outcome: list[str]) -> None:
    """Read once; record why the transport said the peer is gone."""
    try:
        await transport.read()
    except PeerGone as exc:
        outcome.append(str(exc))


@pytest.mark.layer2
async def test_abort_wakes_a_parked_read_with_peer_gone(
        pipe: tuple[int, int, PipeTransport]) -> None:
    _, _, transport = pipe
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_until_gone, transport, outcome)
        await trio.testing.wait_all_tasks_blocked()
        transport.abort()
    assert outcome == ["aborted"]
    # Aborted for good: the next operation fails (the pipe is empty).
    with pytest.raises(PeerGone, match="aborted"):
        await transport.write(b"x")
    with pytest.raises(PeerGone, match="aborted"):
        await transport.read()


@pytest.mark.layer2
async def test_abort_still_delivers_bytes_already_in_the_pipe(
        pipe: tuple[int, int, PipeTransport]) -> None:
    # Regression: a worker that fails to start writes an error hello, then
    # exits. Under load the exit watcher can run first and abort the channel
    # while the hello read is parked; the read used to end with PeerGone at
    # once, and the start error said "exited before its hello" instead of the
    # hello's own explanation (e.g. the module that could not be imported).
    _, write_fd, transport = pipe
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await transport.read())
        with pytest.raises(PeerGone, match="aborted"):
            await transport.read()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        # In one step, as when both events come in one epoll batch: the last
        # words arrive and the owner aborts before the reader runs.
        os.write(write_fd, b"last words")
        transport.abort()
    assert got == [b"last words"]


@pytest.mark.layer2
async def test_abort_after_close_leaves_a_reused_fd_number_alone() -> None:
    # Regression: abort() used to notify_closing() the pipe fds unconditionally.
    # A worker's exit watcher aborts its channel *after* stop() closed stdin, and
    # by then the fd number may belong to something else (another worker's
    # pidfd): its waiter was woken with ClosedResourceError and trio.Process.wait
    # fell into a blocking waitpid, freezing the whole run.
    read_fd, write_fd = os.pipe()
    transport = PipeTransport(write_fd, read_fd)
    os.close(read_fd)
    os.close(write_fd)
    other_read, other_write = os.pipe()  # the lowest free numbers: the same two
    assert {other_read, other_write} == {read_fd, write_fd}
    os.set_blocking(other_read, False)
    woken: list[str] = []

    async def unrelated_waiter() -> None:
        try:
            await trio.lowlevel.wait_readable(other_read)
            woken.append("readable")
        except trio.ClosedResourceError:
            woken.append("closed")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(unrelated_waiter)
            await trio.testing.wait_all_tasks_blocked()
            transport.abort()
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []  # the unrelated waiter still sleeps
            os.write(other_write, b"!")
        assert woken == ["readable"]
    finally:
        os.close(other_read)
        os.close(other_write)


@pytest.mark.layer2
async def test_stream_transport_abort_wakes_a_parked_read() -> None:
    send, receive = trio.testing.memory_stream_pair()
    transport = StreamTransport(send, receive)
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_until_gone, transport, outcome)
        await trio.testing.wait_all_tasks_blocked()
        transport.abort()
    assert outcome == ["aborted"]
    with pytest.raises(PeerGone, match="aborted"):
        await transport.write(b"x")

VIRTUAL_GUARD = 1000.0  # virtual seconds: a lost deadline fails the test, not hangs it


# --- PipeTransport.write: an abort between wake-up and resumption is lost -------------


class _AbortWhenWoken(trio.abc.Instrument):
    """Abort the transport right after epoll woke ``task_name`` from
    ``wait_writable`` and before that task runs: the window in which the pool
    timer's ``time_out`` (or the exit watcher's abort) can land."""

    def __init__(self, task_name: str, transport: PipeTransport) -> None:
        self.task_name = task_name
        self.transport = transport
        self.woken = False
        self.fired = False

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.task_name:
            self.woken = True

    def after_io_wait(self, timeout: float) -> None:
        if self.woken and not self.fired and self.transport._waiting_on is not None:
            self.fired = True
            self.transport.abort()


@pytest.mark.layer2
async def test_pipe_write_abort_landing_after_the_wake_up_is_not_lost() -> None:
    # A large request to a worker that reads slowly: the write parks in
    # wait_writable. The worker reads a little (the fd becomes writable, epoll
    # reschedules the writer) and, before the writer runs, the call is aborted
    # (its deadline passed). abort() notifies the fd, but nobody is registered
    # on it any more; the write loop never looks at _aborted again, fills the
    # pipe and parks in wait_writable for good: the call hangs past its
    # deadline until the worker reads again (never, if it is stuck).
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    transport = PipeTransport(write_fd, read_fd)
    outcome: list[str] = []

    async def writer() -> None:
        try:
            await transport.write(b"x" * (1 << 20))
            outcome.append("written")
        except PeerGone as exc:
            outcome.append(f"gone: {exc}")

    instrument = _AbortWhenWoken("writer", transport)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, name="writer")
            await trio.testing.wait_all_tasks_blocked()
            assert transport._waiting_on == write_fd  # parked: the pipe is full
            trio.lowlevel.add_instrument(instrument)
            try:
                os.read(read_fd, 65536)  # the worker reads a little
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert instrument.fired  # the abort landed in the window
            blocked_again = outcome == []
            # Unblock the writer either way (EPIPE), so the test ends.
            os.close(read_fd)
            read_fd = -1
        assert not blocked_again, "the aborted write went back to sleep in wait_writable"
        assert outcome and outcome[0].startswith("gone")
    finally:
        if read_fd != -1:
            os.close(read_fd)
        os.close(write_fd)


# --- Lease.call: a refused concurrent call wipes the in-flight call's deadline --------


# --- a handle that subclasses the WorkerHandle protocol inherits a no-op time_out ------


