"""Request/response over a framed byte stream pair (parent side).

Shared by real subprocess workers and the test kit's fake workers, so both speak
exactly the same wire format. One call at a time: a worker is leased to at most
one caller, and a second concurrent call is a usage bug.

Cancellation semantics (design section 8): cancelled before the request is
written or after the reply is read, the channel stays clean; cancelled with a
request in flight, the channel is *dirty* (a late reply would be read by the next
caller as the answer to its own request), and the owner must replace the worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from engine.errors import CallTimeout, ProtocolError, RemoteError
from engine.process.transport import PeerGone, transport_for
from engine.protocol import (
    HEADER_SIZE,
    FrameDecoder,
    Hello,
    decode_body,
    encode_request,
    parse_hello,
    parse_response,
)

__all__ = ["FramedChannel", "PeerGone"]


class FramedChannel:
    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, *,
                 worker_id: str, max_frame_size: int,
                 pid: Callable[[], int | None] = lambda: None,
                 busy_poll: float = 0.0) -> None:
        self._send = send
        self._receive = receive
        self._io = transport_for(send, receive, busy_poll)
        self._decoder = FrameDecoder(max_frame_size)
        self._max_frame_size = max_frame_size
        self._ids = itertools.count(1)
        self._worker_id = worker_id
        self._pid = pid
        self._busy = False
        self.dirty = False
        self.broken = False
        self._aborted: str | None = None
        self._timed_out: float | None = None

    @property
    def busy(self) -> bool:
        return self._busy

    def abort(self, reason: str) -> None:
        """Called by the owner when the peer died: wake the call in flight at once."""
        if self._aborted is None:
            self._aborted = reason
        self.broken = True
        self._io.abort()

    def time_out(self, timeout: float) -> None:
        """The owner's deadline for the call in flight passed: end it with
        CallTimeout now. The channel is left dirty (the reply may still come),
        so the owner replaces the worker. No-op when no call is in flight."""
        if not self._busy or self._timed_out is not None:
            return
        self._timed_out = timeout
        self.broken = True
        self._io.abort()

    async def read_hello(self) -> Hello:
        message = await self._read_message()
        return parse_hello(message)

    def call(self, command: str, args: Any = None, *, session: str | None = None,
             timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """One request, one reply (await the result).

        ``timeout`` puts the call in a cancel scope of its own; an owner that
        keeps deadlines on a shared timer (the pool) passes None and calls
        :meth:`time_out` instead, which costs no scope per call. A plain
        function returning the coroutine: the common case adds no frame.
        """
        if timeout is None:
            return self._exchange(command, args, session)
        return self._exchange_within(timeout, command, args, session)

    async def _exchange_within(self, timeout: float, command: str, args: Any,
                               session: str | None) -> Any:
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            return await self._exchange(command, args, session)
        # The scope caught its own deadline's cancellation (a call that is not
        # finished by its deadline leaves the channel dirty).
        assert scope.cancelled_caught
        raise self._timeout_error(timeout, command, session)

    async def _exchange(self, command: str, args: Any, session: str | None) -> Any:
        # A caller already cancelled must leave without writing: the channel stays
        # clean. (The write's own checkpoint comes after `dirty` is set, so
        # without this a cancelled caller would spoil a worker it never used.)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._busy:
            raise trio.BusyResourceError(
                f"worker {self._worker_id} already has a call in flight; a lease serves "
                "one call at a time"
            )
        if self.broken or self.dirty:
            raise PeerGone(self._aborted or "channel unusable after an earlier failure")
        request_id = next(self._ids)
        # Encoded before anything is marked or written: arguments that cannot
        # be sent raise ArgumentError here and leave the channel as it was.
        frame = encode_request(request_id, command, args, session, self._max_frame_size)
        self._busy = True
        # From the first byte written until the reply is parsed, an interruption
        # leaves a stray request or reply on the pipe.
        self.dirty = True
        try:
            # EPIPE on the write (the worker died before reading the request)
            # and EOF on the read both raise PeerGone.
            await self._io.write(frame)
            message = await self._read_message()
        except PeerGone:
            self.broken = True
            if self._timed_out is not None:
                raise self._timeout_error(self._timed_out, command, session) from None
            if self._aborted is not None:
                raise PeerGone(self._aborted) from None
            raise
        finally:
            self._busy = False
        if self._timed_out is not None:
            # The deadline passed while the reply was on its way in: the call
            # timed out all the same (and the worker is replaced, as promised).
            raise self._timeout_error(self._timed_out, command, session)
        self.dirty = False
        return self._result(request_id, command, session, message)

    def _timeout_error(self, timeout: float, command: str,
                       session: str | None) -> CallTimeout:
        return CallTimeout(timeout=timeout, worker_id=self._worker_id, pid=self._pid(),
                           command=command, session=session)

    def _result(self, request_id: int, command: str, session: str | None,
                message: dict[str, Any]) -> Any:
        # Fast path for the common, well-formed success reply.
        if message.get("ok") is True and message.get("id") == request_id \
                and "result" in message and type(request_id) is type(message["id"]):
            return message["result"]
        try:
            response = parse_response(message)
        except ProtocolError as exc:
            self._fail_protocol(f"{exc} (reply to {command!r})")
        if response.id != request_id:
            self._fail_protocol(
                f"reply id {response.id} does not match request id {request_id} "
                f"({command!r}); the worker's stream is out of step"
            )
        if response.ok:
            return response.result
        assert response.error is not None
        # A handler's ValueError comes back as a RemoteError that is also a
        # ValueError, with the worker's traceback as its __cause__.
        raise RemoteError.from_reply(type=response.error.type, message=response.error.message,
                                     traceback=response.error.traceback, command=command,
                                     worker_id=self._worker_id, session=session)

    def _fail_protocol(self, message: str) -> Any:
        self.dirty = True
        self.broken = True
        raise ProtocolError(f"worker {self._worker_id}: {message}", worker_id=self._worker_id,
                            pid=self._pid())

    async def _read_message(self) -> dict[str, Any]:
        while True:
            try:
                message = self._decoder.next_message()
            except ProtocolError as exc:
                self._fail_protocol(str(exc))
            if message is not None:
                return message
            try:
                data = await self._io.read()
            except PeerGone:
                self.broken = True
                raise
            if not self._decoder.buffered and len(data) > HEADER_SIZE:
                # Fast path: one read holding exactly one whole frame (the usual
                # case for a reply) is decoded in place, without buffering.
                length = int.from_bytes(data[:HEADER_SIZE], "big")
                if length == len(data) - HEADER_SIZE and length <= self._max_frame_size:
                    try:
                        return decode_body(bytes(data[HEADER_SIZE:]))
                    except ProtocolError as exc:
                        self._fail_protocol(str(exc))
            try:
                self._decoder.feed(data)
            except ProtocolError as exc:
                self._fail_protocol(str(exc))

    async def send_raw(self, frame: bytes) -> None:
        """Write a frame without waiting for a reply (used for shutdown)."""
        await self._io.write(frame)

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()
