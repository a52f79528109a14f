"""Request/response over a framed byte stream pair (parent side).

Shared by real subprocess workers and the test kit's fake workers, so both speak
exactly the same wire format. One call at a time: a worker is leased to at most
one caller, and a second concurrent call is a usage bug.

Cancellation semantics (design section 8): cancelled before the request is
written or after the reply is read, the channel stays clean. Cancelled (or
timed out through :meth:`FramedChannel.time_out`) with a request in flight, the
caller gets ``Cancelled`` (or ``CallTimeout``) at once and the channel is
*dirty*: a late reply would be read by the next caller as the answer to its own
request. The request is then *abandoned*: the channel remembers its id and the
part of its frame not written yet, and :meth:`FramedChannel.drain_abandoned`
(the pool runs it in the background; the channel's next call runs it first
otherwise) finishes the frame, writes the abandon frame, nudges the worker
(a signal, for a local process) and reads until that request's one reply
arrives (``Cancelled``, or its normal answer), all within ``cancel_grace``.
Then the channel is clean again. If the grace ends first, or anything else
comes back, the channel is broken and the owner must replace the worker, as it
must after any failure with ``cancel_grace=0``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from engine.errors import CallTimeout, ProtocolError, RemoteError
from engine.process.handle import DrainFailed
from engine.process.transport import Interrupted, PeerGone, transport_for
from engine.protocol import (
    CANCELLED,
    HEADER_SIZE,
    PICKLE_CALL,
    PICKLE_FLAG,
    FrameDecoder,
    Hello,
    Pickled,
    abandon_message,
    decode_body,
    decode_pickle_body,
    encode_frame,
    encode_pickle_frame,
    encode_request,
    parse_hello,
    parse_response,
)

__all__ = ["DrainFailed", "FramedChannel", "PeerGone"]

logger = logging.getLogger("engine.pool")
# A call that must complete after its caller was cancelled (run_sync's
# default) says why the caller still waits once it has waited this long.
FINISH_NOTICE_AFTER = 1.0


def _no_nudge() -> None:
    pass


class _Abandoned:
    """A request whose caller gave up while it was in flight."""

    __slots__ = ("command", "nudged", "request_id", "unsent")

    def __init__(self, request_id: int, command: str, unsent: bytes) -> None:
        self.request_id = request_id
        self.command = command
        #: What must still be written: the rest of the request's frame (if its
        #: write was cut short), then the abandon frame.
        self.unsent = unsent
        self.nudged = False


class FramedChannel:
    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, *,
                 worker_id: str, max_frame_size: int,
                 pid: Callable[[], int | None] = lambda: None,
                 busy_poll: float = 0.0, cancel_grace: float = 0.0,
                 nudge: Callable[[], None] = _no_nudge,
                 max_pickle_frame_size: int = 0) -> None:
        """``cancel_grace``: how long :meth:`drain_abandoned` may take (0: an
        abandoned request breaks the channel, the owner kills the worker).
        ``nudge``: called once the abandon frame is written (a local process
        is signalled, so that its running handler is interrupted at once).
        ``max_pickle_frame_size``: > 0 lets a call's ``args`` be a
        :class:`~engine.protocol.Pickled` (sent as a pickle frame; its reply's
        result is one too), 0 refuses pickle frames."""
        self._send = send
        self._receive = receive
        self._io = transport_for(send, receive, busy_poll)
        self._decoder = FrameDecoder(max_frame_size, max_pickle_frame_size)
        self._max_frame_size = max_frame_size
        self._max_pickle_frame_size = max_pickle_frame_size
        self._ids = itertools.count(1)
        self._worker_id = worker_id
        self._pid = pid
        self._busy = False
        self.dirty = False
        self.broken = False
        self._aborted: str | None = None
        self._timed_out: float | None = None
        self._cancel_grace = cancel_grace
        self._nudge = nudge
        self._abandoned: _Abandoned | None = None
        #: A drain failed: the worker is alive but will never answer again.
        self.drain_failed = False

    @property
    def busy(self) -> bool:
        return self._busy

    def abort(self, reason: str) -> None:
        """Called by the owner when the peer died: wake the call in flight at once."""
        if self._aborted is None:
            self._aborted = reason
        self.broken = True
        self._io.abort()

    @property
    def abandoned(self) -> bool:
        """A request was abandoned in flight and :meth:`drain_abandoned` can
        still give the channel back clean."""
        return self._abandoned is not None and not self.broken

    def time_out(self, timeout: float) -> None:
        """The owner's deadline for the call in flight passed: end it with
        CallTimeout now. Its request is abandoned (the reply may still come),
        unless the reply was read already. No-op when no call is in flight."""
        if not self._busy or self._timed_out is not None:
            return
        self._timed_out = timeout
        self._io.interrupt()

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
        request_id = next(self._ids)
        # Encoded before anything is marked or written: arguments that cannot
        # be sent raise ArgumentError here and leave the channel as it was.
        finish = False
        if type(args) is not Pickled:
            frame = encode_request(request_id, command, args, session, self._max_frame_size)
        else:
            frame = self._pickle_request(request_id, args, session)
            finish = args.finish_on_cancel
        if self.broken or self.dirty:
            await self._recover(command, session)
        self._busy = True
        # From the first byte written until the reply is parsed, an interruption
        # leaves a stray request or reply on the pipe.
        self.dirty = True
        written = False
        try:
            # EPIPE on the write (the worker died before reading the request)
            # and EOF on the read both raise PeerGone.
            try:
                await self._io.write(frame)
                written = True
                message = await self._read_message()
            except trio.Cancelled:
                if not finish:
                    raise
                # A call that must complete once sent (run_sync's default: a
                # running function is not cancelled). Shielded from here on
                # only: a scope entered for every call costs more than the
                # rest of the parent's work on it. The caller's scope is still
                # cancelled, so its next checkpoint raises Cancelled. Both
                # transports resume: a cut write keeps the rest in ``unsent``,
                # a read keeps what it had in the decoder.
                with trio.CancelScope(shield=True):
                    if not written:
                        rest, self._io.unsent = self._io.unsent, b""
                        await self._io.write(rest)
                        written = True
                    message = await self._finish_cancelled(command)
        except PeerGone:
            self.broken = True
            timed_out = self._end_timeout()
            if timed_out is not None:
                raise self._timeout_error(timed_out, command, session) from None
            if self._aborted is not None:
                raise PeerGone(self._aborted) from None
            raise
        except BaseException as exc:
            # Cancelled (the caller gave up) or Interrupted (its deadline
            # passed); a ProtocolError has broken the channel already.
            timed_out = self._end_timeout()
            if not self.broken:
                self._give_up(request_id, command, frame, written)
            if isinstance(exc, Interrupted):
                raise self._timeout_error(timed_out or 0.0, command, session) from None
            raise
        finally:
            self._busy = False
        if self._timed_out is not None:
            # The deadline passed while the reply was on its way in: the call
            # timed out all the same (no window where the answer depends on
            # scheduling), but the reply was read: the channel is clean.
            timed_out = self._end_timeout()
            self.dirty = False
            raise self._timeout_error(timed_out or 0.0, command, session, late=True)
        self.dirty = False
        return self._result(request_id, command, session, message)

    async def _finish_cancelled(self, command: str) -> dict[str, Any]:
        """Read the reply of a call whose caller was cancelled but which must
        complete (shielded by the caller). If it takes a while, say why the
        caller is still waiting: a Ctrl-C that seems ignored is the usual way
        to meet this promise."""
        message: dict[str, Any] | None = None
        with trio.move_on_after(FINISH_NOTICE_AFTER):
            message = await self._read_message()
        if message is None:
            logger.warning(
                "worker %s: the caller of %r was cancelled while its function runs; "
                "waiting for it to return (run_sync's kill_on_cancel=False: a running "
                "function is not cancelled; pass kill_on_cancel=True to kill its worker "
                "at once instead)", self._worker_id, command)
            message = await self._read_message()
        return message

    def _pickle_request(self, request_id: int, args: Pickled, session: str | None) -> bytes:
        if not self._max_pickle_frame_size:
            raise ProtocolError(f"worker {self._worker_id} takes JSON frames only; a pickled "
                                "call (run_sync) needs a worker started with pickle allowed",
                                worker_id=self._worker_id)
        data = args.data
        return encode_pickle_frame(request_id, PICKLE_CALL,
                                   data if type(data) is bytes else bytes(data), session,
                                   self._max_pickle_frame_size)

    def _end_timeout(self) -> float | None:
        """The call ends: forget its deadline (and an interrupt nobody saw)."""
        timed_out, self._timed_out = self._timed_out, None
        if timed_out is not None:
            self._io.clear_interrupt()
        return timed_out

    def _give_up(self, request_id: int, command: str, frame: bytes, written: bool) -> None:
        """The caller left with its request in flight: abandon it."""
        unsent = b"" if written else self._io.unsent
        if len(unsent) == len(frame):
            # Not a byte went out: the worker never saw this request.
            self.dirty = False
            return
        self._abandoned = _Abandoned(
            request_id, command, unsent + encode_frame(abandon_message(request_id)))

    async def _recover(self, command: str, session: str | None) -> None:
        """Before a call on a dirty channel: drain the abandoned request first
        (within the grace), or raise PeerGone (the owner replaces the worker)."""
        if not self.abandoned or self._cancel_grace <= 0:
            raise PeerGone(self._aborted or "channel unusable after an earlier failure")
        try:
            await self.drain_abandoned()
        except DrainFailed as exc:
            raise PeerGone(str(exc)) from None
        except Interrupted:
            # The new call's deadline passed while the old request drained.
            raise self._timeout_error(self._end_timeout() or 0.0, command, session) from None

    async def drain_abandoned(self) -> str:
        """Finish the abandoned request: write the rest of its frame and the
        abandon frame, nudge the worker, and read until its one reply arrives,
        all within ``cancel_grace``. Then the channel is clean.

        Returns ``"cancelled"`` (the worker answered ``Cancelled``: the handler
        was interrupted, or never started) or ``"answered"`` (it finished
        anyway). Raises :class:`DrainFailed` (the channel is broken: the owner
        must kill the worker) when the grace ends first, the worker dies, or
        anything but that reply comes back. Cancelled from outside, it can be
        run again later: it resumes where it stopped.
        """
        abandoned = self._abandoned
        if abandoned is None or self.broken:
            raise DrainFailed(f"worker {self._worker_id}: no abandoned request to drain")
        if self._busy:
            raise trio.BusyResourceError(f"worker {self._worker_id} has a call in flight")
        what = f"request {abandoned.request_id} ({abandoned.command!r})"
        grace = self._cancel_grace
        self._busy = True
        try:
            with trio.move_on_after(grace) as scope:
                response = await self._finish(abandoned)
        except PeerGone as exc:
            self.broken = True
            self.drain_failed = True
            raise DrainFailed(f"worker {self._worker_id} went away while {what} drained "
                              f"({self._aborted or exc})", worker_gone=True) from None
        except ProtocolError as exc:
            self.drain_failed = True
            raise DrainFailed(f"{exc} (while {what} drained)") from None
        finally:
            self._busy = False
        if scope.cancelled_caught:
            self.broken = True
            self.drain_failed = True
            raise DrainFailed(f"worker {self._worker_id} did not give {what} back within "
                              f"cancel_grace={grace:g}s")
        self._abandoned = None
        self.dirty = False
        if not response.ok and response.error is not None \
                and response.error.type == CANCELLED:
            return "cancelled"
        return "answered"

    async def _finish(self, abandoned: _Abandoned) -> Any:
        if abandoned.unsent:
            try:
                await self._io.write(abandoned.unsent)
            except BaseException:
                abandoned.unsent = self._io.unsent  # resumable: what is still to go
                raise
            abandoned.unsent = b""
        if not abandoned.nudged:
            abandoned.nudged = True
            self._nudge()
        message = await self._read_message()
        try:
            response = parse_response(message)
        except ProtocolError as exc:
            self._fail_protocol(f"{exc} (draining request {abandoned.request_id})")
        if response.id != abandoned.request_id:
            self._fail_protocol(
                f"reply id {response.id} while draining abandoned request "
                f"{abandoned.request_id}; the worker's stream is out of step")
        return response

    def _timeout_error(self, timeout: float, command: str, session: str | None, *,
                       late: bool = False) -> CallTimeout:
        """The CallTimeout of a call that just ended, saying what becomes of the
        worker (read from the channel's state after the call gave up)."""
        if late:
            outcome = "late"
        elif self.broken:
            outcome = "killed"
        elif not self.dirty:
            outcome = "unsent"
        elif self.abandoned and self._cancel_grace > 0:
            outcome = "abandoned"
        else:
            outcome = "killed"
        return CallTimeout(timeout=timeout, worker_id=self._worker_id, pid=self._pid(),
                           command=command, session=session, outcome=outcome,
                           cancel_grace=self._cancel_grace)

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
                if length ^ PICKLE_FLAG == len(data) - HEADER_SIZE \
                        and len(data) - HEADER_SIZE <= self._max_pickle_frame_size:
                    try:  # the same for a small pickle reply (run_sync)
                        return decode_pickle_body(bytes(data[HEADER_SIZE:]))
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
