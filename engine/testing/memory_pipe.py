"""In-memory pipes for the fake workers, as cheap as the framing allows.

A call on a real worker costs one trip through the scheduler on the parent's
side (:class:`~engine.process.transport.PipeTransport`: a plain write, then one
wait for the reply). Trio's generic memory streams cost several per call (a
checkpoint in every operation, a cancel scope per operation in the generic
transport, a task in the fake reading its stdin). Here:

* the parent writes a frame into the fake's stdin with no checkpoint, as
  ``os.write`` on a pipe does, and the fake decodes it right there (its
  ``consumer``), so no task has to wake up to read it;
* the parent's read parks its task once (``wait_task_rescheduled``) until the
  fake writes the reply or the pipe closes; an abort or interrupt wakes it,
  as ``notify_closing`` does for a real pipe.

Semantics kept: bytes are delivered in order and whole; closing the write end
is EOF once the buffer is read; writing into a pipe whose reader is gone raises
``trio.BrokenResourceError`` (EPIPE).
"""

from __future__ import annotations

from collections.abc import Callable

import outcome
import trio

from engine.process.transport import READ_SIZE, Interrupted, PeerGone

Consumer = Callable[[bytes], None]


class MemoryPipe:
    """One-way bytes. Either a task reads them (:meth:`receive_some`), or a
    ``consumer`` takes each write as it happens (b"" on EOF)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.write_closed = False  # EOF once the buffer is drained
        self.read_closed = False  # writes raise BrokenResourceError
        self.consumer: Consumer | None = None
        self._reader: trio.lowlevel.Task | None = None

    def feed(self, data: bytes) -> None:
        if self.write_closed:
            raise trio.ClosedResourceError("this pipe's write end is closed")
        if self.read_closed:
            raise trio.BrokenResourceError("the pipe's reader is gone")
        if not data:
            return
        if self.consumer is not None:
            self.consumer(bytes(data))
            return
        self.buffer += data
        self._wake()

    def close_write(self) -> None:
        if not self.write_closed:
            self.write_closed = True
            if self.consumer is not None and not self.read_closed:
                self.consumer(b"")
            self._wake()

    def close_read(self) -> None:
        self.read_closed = True
        self.buffer.clear()
        self._wake()

    def _wake(self) -> None:
        task, self._reader = self._reader, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def take(self) -> bytes:
        data = bytes(self.buffer[:READ_SIZE])
        del self.buffer[:READ_SIZE]
        return data

    async def park(self) -> None:
        """Sleep until bytes, EOF, a close or a :meth:`wake` (cancellable)."""
        self._reader = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    wake = _wake

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """For a task reading as from a stream: b"" at EOF."""
        while True:
            if self.read_closed:
                raise trio.ClosedResourceError("this pipe's read end is closed")
            if self.buffer:
                await trio.lowlevel.checkpoint()
                return self.take()
            if self.write_closed:
                await trio.lowlevel.checkpoint()
                return b""
            await self.park()


class PipeTransport:
    """The parent's side of a fake: the framing's Transport over two MemoryPipes,
    with the costs and the wake-ups of the real pipe transport."""

    def __init__(self, to_child: MemoryPipe, from_child: MemoryPipe) -> None:
        self._out = to_child
        self._in = from_child
        self._aborted = False
        self._interrupted = False
        self.unsent = b""

    def abort(self) -> None:
        self._aborted = True
        self._in.wake()

    def interrupt(self) -> None:
        self._interrupted = True
        self._in.wake()

    def clear_interrupt(self) -> None:
        self._interrupted = False

    async def write(self, data: bytes) -> None:
        if self._aborted:
            raise PeerGone("aborted")
        try:
            self._out.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerGone(f"stream broken: {exc!r}") from None

    async def read(self) -> bytes:
        pipe = self._in
        waited = False
        while True:
            if self._aborted or pipe.read_closed:
                raise PeerGone("aborted")
            if pipe.buffer:
                # Before the interrupt, as the real transport reads before it
                # looks: a reply already there when the deadline passed is
                # read (the call is then "late", and the pipe is clean).
                if not waited:
                    # Already there: still a schedule point, as for a real pipe.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return pipe.take()
            if self._interrupted:
                self._interrupted = False
                raise Interrupted
            if pipe.write_closed:
                raise PeerGone("end of stream")
            await pipe.park()
            waited = True


class PipeSendStream(trio.abc.SendStream):
    """A write end as a Trio stream (what FramedChannel is given; it asks
    :meth:`make_transport` for the fast path)."""

    def __init__(self, pipe: MemoryPipe) -> None:
        self.pipe = pipe

    def make_transport(self, receive: trio.abc.ReceiveStream) -> PipeTransport:
        assert isinstance(receive, PipeReceiveStream)
        return PipeTransport(self.pipe, receive.pipe)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.pipe.feed(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.pipe.close_write()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class PipeReceiveStream(trio.abc.ReceiveStream):
    def __init__(self, pipe: MemoryPipe) -> None:
        self.pipe = pipe

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.pipe.receive_some(max_bytes)

    def close(self) -> None:
        self.pipe.close_read()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def pipe_pair() -> tuple[PipeSendStream, PipeReceiveStream]:
    pipe = MemoryPipe()
    return PipeSendStream(pipe), PipeReceiveStream(pipe)
