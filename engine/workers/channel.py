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
import math
from collections.abc import Callable
from typing import Any

import trio

from engine.errors import CallTimeout, ProtocolError, RemoteError
from engine.protocol import (
    HEADER_SIZE,
    FrameDecoder,
    Hello,
    decode_body,
    encode_frame,
    parse_hello,
    parse_response,
)
from engine.workers.transport import PeerGone, transport_for

__all__ = ["FramedChannel", "PeerGone"]


class FramedChannel:
    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, *,
                 worker_id: str, max_frame_size: int,
                 pid: Callable[[], int | None] = lambda: None) -> None:
        self._send = send
        self._receive = receive
        self._io = transport_for(send, receive)
        self._decoder = FrameDecoder(max_frame_size)
        self._max_frame_size = max_frame_size
        self._ids = itertools.count(1)
        self._worker_id = worker_id
        self._pid = pid
        self._busy = False
        self.dirty = False
        self.broken = False
        self._scope: trio.CancelScope | None = None
        self._aborted: str | None = None

    @property
    def busy(self) -> bool:
        return self._busy

    def abort(self, reason: str) -> None:
        """Called by the owner when the peer died: wake the call in flight at once."""
        self._aborted = reason
        self.broken = True
        if self._scope is not None:
            self._scope.cancel()

    async def read_hello(self) -> Hello:
        message = await self._read_message()
        return parse_hello(message)

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None) -> Any:
        # A caller already cancelled must leave without writing: the channel stays
        # clean. (send_all's own first checkpoint comes after `dirty` is set, so
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
        frame = encode_frame(
            {"id": request_id, "command": command, "args": args, "session": session},
            self._max_frame_size,
        )
        self._busy = True
        try:
            # The deadline is given at construction: setting it afterwards costs
            # a second registration with Trio's deadline heap on every call.
            deadline = math.inf if timeout is None else trio.current_time() + timeout
            with trio.CancelScope(deadline=deadline) as scope:
                self._scope = scope
                # From the first byte written until the reply is parsed, an
                # interruption leaves a stray request or reply on the pipe.
                self.dirty = True
                try:
                    await self._io.write(frame)
                except PeerGone:
                    # The worker died before reading the request (EPIPE): the
                    # owner reports it as a crash, like an EOF on the read side.
                    self.broken = True
                    raise
                message = await self._read_message()
                self.dirty = False
                return self._result(request_id, command, session, message)
        finally:
            self._busy = False
            self._scope = None
            if scope.cancelled_caught:
                self._raise_interrupted(command, session, timeout)

    def _raise_interrupted(self, command: str, session: str | None,
                           timeout: float | None) -> None:
        if self._aborted is not None:
            raise PeerGone(self._aborted)
        assert timeout is not None
        raise CallTimeout(timeout=timeout, worker_id=self._worker_id, pid=self._pid(),
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
        raise RemoteError(type=response.error.type, message=response.error.message,
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
