"""Byte transports under a FramedChannel: generic Trio streams, or raw pipe fds.

A subprocess's pipes are Trio ``FdStream``s. Their ``send_all`` and
``receive_some`` each start with a full checkpoint, so a request/reply pays
three trips through the scheduler. ``PipeTransport`` writes the request with a
plain non-blocking ``os.write`` and then waits for the reply with
``wait_readable``: one trip, which is the whole cost difference between a call
and the bare pipe floor. It is only used while the channel owns the pipe (one
call at a time), and the ``FdStream`` objects still own and close the fds.

Both transports map a dead peer (EOF, broken pipe, closed fd) to ``PeerGone``.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

import trio

READ_SIZE = 65536


class PeerGone(Exception):
    """Internal: the stream ended (EOF or broken pipe). The owner turns this into
    WorkerCrashed or WorkerStartError with the exit status."""


class Transport(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def read(self) -> bytes | bytearray:
        """Some bytes (never empty); raises PeerGone at end of stream."""
        ...


class StreamTransport:
    """Any pair of Trio streams (the test kit's fakes use memory streams)."""

    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> None:
        self._send = send
        self._receive = receive

    async def write(self, data: bytes) -> None:
        try:
            await self._send.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerGone(f"stream broken: {exc!r}") from None

    async def read(self) -> bytes | bytearray:
        try:
            data = await self._receive.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerGone(f"stream broken: {exc!r}") from None
        if not data:
            raise PeerGone("end of stream")
        return data


_GONE_ERRNOS = {errno.EPIPE, errno.EBADF, errno.ECONNRESET}


class PipeTransport:
    """Raw non-blocking pipe fds (Trio already set O_NONBLOCK on them)."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                try:
                    sent += os.write(self._write_fd, view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._write_fd)
        except trio.ClosedResourceError:
            raise PeerGone("pipe closed") from None
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise PeerGone(f"write failed: {exc.strerror}") from None
            raise
        finally:
            view.release()

    async def read(self) -> bytes:
        waited = False
        while True:
            try:
                data = os.read(self._read_fd, READ_SIZE)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._read_fd)
                except trio.ClosedResourceError:
                    raise PeerGone("pipe closed") from None
                waited = True
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    raise PeerGone(f"read failed: {exc.strerror}") from None
                raise
            if not data:
                raise PeerGone("end of stream")
            if not waited:
                # The reply was already there: still a schedule point, as every
                # Trio blocking call must be.
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data


def transport_for(send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> Transport:
    """The fast pipe path for subprocess pipes, the generic one for anything else."""
    if isinstance(send, trio.lowlevel.FdStream) and isinstance(receive, trio.lowlevel.FdStream):
        return PipeTransport(send.fileno(), receive.fileno())
    return StreamTransport(send, receive)
