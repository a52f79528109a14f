"""What a real subprocess worker and a test-kit fake have in common.

Both are a :class:`~engine.process.channel.FramedChannel` plus an exit status
and a stderr tail. This base turns the channel's ``PeerGone`` into the typed
errors callers see (``WorkerCrashed`` during a call, ``WorkerStartError`` before
the hello), so the two kinds of worker report deaths identically. Subclasses say
how to wait for the exit to be known (``_settle``) and how to kill.
"""

from __future__ import annotations

import collections
from typing import Any, NoReturn

import trio

from engine.errors import ProtocolError, WorkerCrashed, WorkerStartError
from engine.process.channel import FramedChannel, PeerGone
from engine.process.handle import ExitInfo
from engine.protocol import Hello


def raise_sole_exception(group: BaseExceptionGroup[Any]) -> NoReturn:
    """Re-raise what a worker's nursery caught.

    A worker's background tasks never raise, so a group of one holds the
    body's own exception (a start failure, or whatever the caller raised in
    the block): raise it as is, so that ``except WorkerStartError`` works.
    Anything else stays a group (strict exception groups).
    """
    if len(group.exceptions) == 1:
        error = group.exceptions[0]
        raise error from error.__cause__
    raise group


class ChannelWorker:
    # How the error messages name the thing that died ("process", "fake process").
    _kind = "process"

    def __init__(self, worker_id: str, channel: FramedChannel, tail_lines: int) -> None:
        self._worker_id = worker_id
        self._channel = channel
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._hello: Hello | None = None
        self._exit: ExitInfo | None = None
        self._exited = trio.Event()

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def hello(self) -> Hello:
        if self._hello is None:
            raise RuntimeError("worker has not sent its hello yet")
        return self._hello

    @property
    def dirty(self) -> bool:
        return self._channel.dirty or self._channel.broken

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    def stderr_tail(self) -> tuple[str, ...]:
        return tuple(self._tail)

    async def wait_exited(self) -> ExitInfo:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None) -> Any:
        try:
            return await self._channel.call(command, args, session=session, timeout=timeout)
        except PeerGone as exc:
            await self._settle()
            info = self._exit
            raise WorkerCrashed(
                worker_id=self._worker_id, pid=self.pid,
                exit_code=info.exit_code if info else None,
                signal=info.signal if info else None, stderr_tail=self.stderr_tail(),
                command=command, session=session, detail="" if info else str(exc),
            ) from None

    def time_out(self, timeout: float) -> None:
        """The owner's deadline for the call in flight passed: that call raises
        CallTimeout now and the worker is left dirty (to be replaced)."""
        self._channel.time_out(timeout)

    async def _settle(self) -> None:
        """After the stream ended: wait (bounded) until the exit status is known."""

    def _describe_exit(self) -> str:
        return "running" if self._exit is None else self._exit.describe()

    def _start_error(self, reason: str) -> WorkerStartError:
        info = self._exit
        return WorkerStartError(
            reason, worker_id=self._worker_id, pid=self._spawned_pid(),
            exit_code=info.exit_code if info else None,
            signal=info.signal if info else None,
            stderr_tail=self.stderr_tail(), argv=self._argv(),
        )

    def _spawned_pid(self) -> int | None:
        return self.pid

    def _argv(self) -> tuple[str, ...]:
        return ()

    async def _read_hello(self, start_timeout: float) -> Hello:
        with trio.move_on_after(start_timeout):
            try:
                self._hello = await self._channel.read_hello()
                return self._hello
            except PeerGone:
                await self._settle()
                raise self._start_error(
                    f"{self._kind} {self._describe_exit()} before its hello") from None
            except ProtocolError as exc:
                # Usually an error hello: the runtime reported a start failure and
                # is exiting; wait (bounded) for its status and last stderr lines.
                await self._settle()
                raise self._start_error(f"bad hello: {exc}") from exc
        raise self._start_error(f"no hello within start_timeout={start_timeout:g}s")
