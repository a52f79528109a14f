"""Byte transports under a FramedChannel: generic Trio streams, or raw pipe fds.

A subprocess's pipes are Trio ``FdStream``s. Their ``send_all`` and
``receive_some`` each start with a full checkpoint, so a request/reply pays
three trips through the scheduler. ``PipeTransport`` writes the request with a
plain non-blocking ``os.write`` and then waits for the reply with
``wait_readable``: one trip, which is the whole cost difference between a call
and the bare pipe floor. It is only used while the channel owns the pipe (one
call at a time), and the ``FdStream`` objects still own and close the fds.

Both transports map a dead peer (EOF, broken pipe, closed fd) to ``PeerGone``,
and both can be *aborted* from another task: the owner learned that the peer
died (or that the call's deadline passed), and the read or write in flight must
end now with ``PeerGone`` instead of waiting for an EOF that a grandchild holding
the pipe open may never send. The pipe transport does that without a cancel
scope per call: ``notify_closing`` wakes its ``wait_readable``/``wait_writable``.

An *interrupt* is the gentle form (the call's deadline passed, and the worker
will be asked to abandon the request): the read or write in flight ends with
``Interrupted`` and the transport stays usable. A write that was interrupted
or cancelled half-way leaves the bytes it did not send in ``unsent``, so the
owner can complete the frame before it writes anything else.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import trio

from engine.busy_poll import BusyPollPolicy

READ_SIZE = 65536
# After a read that filled READ_SIZE (a large frame is coming: run_sync's
# bytes), read this much at once until a read comes back short: far fewer
# reads and wake-ups, and small replies never pay for a large buffer.
LARGE_READ_SIZE = 1 << 20
T = TypeVar("T")


class PeerGone(Exception):
    """Internal: the stream ended (EOF or broken pipe). The owner turns this into
    WorkerCrashed or WorkerStartError with the exit status."""


class Interrupted(Exception):
    """Internal: :meth:`Transport.interrupt` ended the read or write in flight."""


class Transport(Protocol):
    #: What the last write left unsent when it was interrupted or cancelled.
    unsent: bytes

    async def write(self, data: bytes) -> None: ...

    def abort(self) -> None:
        """Wake a read or write in flight with PeerGone (the channel is done)."""
        ...

    def interrupt(self) -> None:
        """Wake a read or write in flight (or the next one) with Interrupted;
        the transport stays usable."""
        ...

    def clear_interrupt(self) -> None:
        """Forget an interrupt no operation has seen (the call ended first)."""
        ...

    async def read(self) -> bytes | bytearray:
        """Some bytes (never empty); raises PeerGone at end of stream."""
        ...


class StreamTransport:
    """Any pair of Trio streams (the test kit's fakes use memory streams)."""

    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> None:
        self._send = send
        self._receive = receive
        # Generic streams have no fd to notify: each operation runs in a scope
        # that abort() cancels. (Only fakes use this path; its cost is no matter.)
        self._scope: trio.CancelScope | None = None
        self._aborted = False
        self._interrupted = False
        self.unsent = b""

    def abort(self) -> None:
        self._aborted = True
        if self._scope is not None:
            self._scope.cancel()

    def interrupt(self) -> None:
        self._interrupted = True
        if self._scope is not None:
            self._scope.cancel()

    def clear_interrupt(self) -> None:
        self._interrupted = False

    async def write(self, data: bytes) -> None:
        try:
            await self._abortable(lambda: self._send.send_all(data))
        except BaseException:
            # Memory streams (the fakes) take a frame whole or not at all: a
            # write that did not finish sent nothing.
            self.unsent = data
            raise

    async def read(self) -> bytes | bytearray:
        data = await self._abortable(lambda: self._receive.receive_some(READ_SIZE))
        if not data:
            raise PeerGone("end of stream")
        return data

    async def _abortable(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run one stream operation that abort() can end (then PeerGone)."""
        result = None
        with trio.CancelScope() as self._scope:
            try:
                if not self._aborted and not self._interrupted:
                    result = await operation()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerGone(f"stream broken: {exc!r}") from None
            finally:
                self._scope = None
        if self._aborted:
            raise PeerGone("aborted")
        if self._interrupted:
            self._interrupted = False
            raise Interrupted
        return result


_GONE_ERRNOS = {errno.EPIPE, errno.EBADF, errno.ECONNRESET}


class PipeTransport:
    """Raw non-blocking pipe fds (Trio already set O_NONBLOCK on them).

    A read whose reply is not there yet spins through the scheduler first, for
    as long as its ``busy_poll`` policy says (:mod:`engine.busy_poll`)."""

    def __init__(self, write_fd: int, read_fd: int,
                 busy_poll: BusyPollPolicy | None = None) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        # When to keep polling (through the scheduler) for a reply before
        # sleeping in epoll; None: never.
        self.busy_poll = busy_poll
        self._aborted = False
        self._interrupted = False
        self._waiting_on: int | None = None  # the fd a wait_* is parked on
        self.unsent = b""
        self._read_size = READ_SIZE

    def abort(self) -> None:
        self._aborted = True
        # Notify only an fd we are parked on: that fd is certainly still open.
        # Once the FdStream closed it, its number may belong to something else
        # (another worker's pidfd!), and notify_closing would wake that instead.
        # Every operation checks _aborted before it waits again.
        if self._waiting_on is not None:
            trio.lowlevel.notify_closing(self._waiting_on)

    def interrupt(self) -> None:
        # As abort, but only for the operation in flight: it raises Interrupted
        # (checked wherever it would wait again) and clears the flag.
        self._interrupted = True
        if self._waiting_on is not None:
            trio.lowlevel.notify_closing(self._waiting_on)

    def clear_interrupt(self) -> None:
        self._interrupted = False

    def _raise_interrupted(self) -> None:
        self._interrupted = False
        raise Interrupted

    async def write(self, data: bytes) -> None:
        if self._aborted:
            raise PeerGone("aborted")
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                try:
                    sent += os.write(self._write_fd, view[sent:])
                except BlockingIOError:
                    if self._interrupted:
                        self._raise_interrupted()
                    self._waiting_on = self._write_fd
                    try:
                        await trio.lowlevel.wait_writable(self._write_fd)
                    except trio.ClosedResourceError:
                        if not self._interrupted or self._aborted:
                            raise
                    finally:
                        self._waiting_on = None
                    # An abort may land after epoll woke us and before we ran:
                    # its notify_closing found nobody waiting, so look here.
                    if self._aborted:
                        raise PeerGone("aborted") from None
                    if self._interrupted:
                        self._raise_interrupted()
        except trio.ClosedResourceError:
            raise PeerGone("pipe closed") from None
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise PeerGone(f"write failed: {exc.strerror}") from None
            raise
        except BaseException:
            # Interrupted or cancelled half-way: the rest of the frame must be
            # written before anything else goes down this pipe.
            self.unsent = bytes(view[sent:])
            raise
        finally:
            view.release()

    async def read(self) -> bytes:
        waited = False
        policy = self.busy_poll
        spin_until = -1.0  # negative: no wait begun (the reply may be there already)
        while True:
            try:
                # After an abort, still read what the peer wrote before it went
                # (an error hello, a last reply): a crashed worker's exit can
                # be seen before its final bytes are read, and they explain it.
                data = os.read(self._read_fd, self._read_size)
            except BlockingIOError:
                if self._aborted:
                    raise PeerGone("aborted") from None
                if self._interrupted:
                    self._raise_interrupted()
                if policy is not None:
                    if spin_until < 0.0:
                        # Nothing there at the first look: a wait begins, and
                        # the policy says whether to spin (0.0: sleep at once).
                        spin_until = policy.begin_wait()
                        spinning = spin_until > 0.0  # the budget is ahead
                    else:
                        # Within the budget, and this end was not descheduled.
                        spinning = spin_until > 0.0 and policy.keep_polling(spin_until)
                        if not spinning:
                            spin_until = 0.0  # blocked from now on: ask no more
                    if spinning:
                        # A reply that usually comes within microseconds: look
                        # again after one pass through the scheduler (other tasks
                        # run in it) rather than sleep in epoll, so the CPU
                        # doesn't idle down and take its wake-up latency on every
                        # call. A full checkpoint: a cancelled caller leaves at
                        # once, as from wait_readable (the channel is dirty
                        # either way).
                        await trio.lowlevel.checkpoint()
                        waited = True
                        continue
                self._waiting_on = self._read_fd
                try:
                    await trio.lowlevel.wait_readable(self._read_fd)
                except trio.ClosedResourceError:
                    if not self._aborted and not self._interrupted:
                        # The FdStream closed the fd: its number is not ours now.
                        raise PeerGone("pipe closed") from None
                    # Our own abort or interrupt: the fd is open; read what is
                    # there, then PeerGone or Interrupted.
                finally:
                    self._waiting_on = None
                waited = True
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    raise PeerGone(f"read failed: {exc.strerror}") from None
                raise
            if not data:
                raise PeerGone("end of stream")
            self._read_size = LARGE_READ_SIZE if len(data) >= READ_SIZE else READ_SIZE
            if spin_until >= 0.0 and policy is not None:
                # How long the reply took decides whether the next wait spins.
                policy.frame_arrived()
            if not waited:
                # The reply was already there: still a schedule point, as every
                # Trio blocking call must be.
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data


def transport_for(send: trio.abc.SendStream, receive: trio.abc.ReceiveStream,
                  busy_poll: float = 0.0) -> Transport:
    """The fast pipe path for subprocess pipes, the generic one for anything else.

    ``busy_poll``: the pipe path's polling budget in seconds (0: never poll)."""
    make_transport = getattr(send, "make_transport", None)
    if make_transport is not None:
        # A stream that brings its own transport (the test kit's memory pipes).
        transport: Transport = make_transport(receive)
        return transport
    if isinstance(send, trio.lowlevel.FdStream) and isinstance(receive, trio.lowlevel.FdStream):
        policy = BusyPollPolicy(busy_poll) if busy_poll > 0 else None
        return PipeTransport(send.fileno(), receive.fileno(), policy)
    return StreamTransport(send, receive)
