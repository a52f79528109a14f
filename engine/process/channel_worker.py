"""What a real subprocess worker and a test-kit fake have in common.

Both are a :class:`~engine.process.channel.FramedChannel` plus an exit status
and a stderr tail, and both live the same way: :meth:`ChannelWorker.running`
starts their background tasks, reads the hello (or raises ``WorkerStartError``
saying why there was none), runs the owner's block and stops them. This base
turns the channel's ``PeerGone`` into the typed errors callers see
(``WorkerCrashed`` during a call, ``WorkerStartError`` before the hello), so the
two kinds of worker report deaths identically.

A subclass says how its process ends and is watched: it reports the exit with
:meth:`~ChannelWorker.record_exit` and stderr lines with
:meth:`~ChannelWorker.record_stderr_line`, and implements ``kill``, ``stop``
and, when its exit is learned after the pipe's end, ``settle``. It uses only
this public interface: the base's state is its own.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio

from engine.errors import ProtocolError, WorkerCrashed, WorkerStartError
from engine.process.channel import FramedChannel, PeerGone
from engine.process.handle import ExitInfo
from engine.protocol import Hello, encode_frame

# The shutdown command, sent without waiting for a reply (its id, 2**30, is far
# above those of the channel's own calls).
_SHUTDOWN_FRAME = encode_frame({"id": 1 << 30, "command": "shutdown", "args": None,
                                "session": None})

# A stderr line longer than this is clipped in the tail (and so in error messages).
_MAX_TAIL_LINE = 2000


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
    """A worker seen through its framed channel; see the module docstring."""

    def __init__(self, worker_id: str, channel: FramedChannel, tail_lines: int, *,
                 kind: str = "process", spawned_pid: int | None = None,
                 argv: tuple[str, ...] = ()) -> None:
        """``kind`` names the thing that dies in error messages ("process",
        "fake process"); ``spawned_pid`` and ``argv`` describe what was started,
        for ``WorkerStartError`` (with a launcher, not the interpreter's pid)."""
        self._worker_id = worker_id
        self._channel = channel
        self._kind = kind
        self._spawned_pid = spawned_pid
        self._argv = argv
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._hello: Hello | None = None
        self._exit: ExitInfo | None = None
        self._exited = trio.Event()

    # --- the WorkerHandle protocol ----------------------------------------------

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def pid(self) -> int | None:
        """The pid the hello gave (the worker interpreter's own); before the
        hello, the spawned process's (with a launcher, the launcher's)."""
        hello = self._hello
        return hello.pid if hello is not None else self._spawned_pid

    @property
    def host(self) -> str | None:
        """The node name of the machine the worker runs on, from its hello
        (None before the hello, or when the worker does not say)."""
        hello = self._hello
        return hello.host if hello is not None else None

    @property
    def hello(self) -> Hello:
        if self._hello is None:
            raise RuntimeError("worker has not sent its hello yet")
        return self._hello

    @property
    def ready(self) -> bool:
        """True once the hello arrived."""
        return self._hello is not None

    @property
    def dirty(self) -> bool:
        return self._channel.dirty or self._channel.broken

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    def is_alive(self) -> bool:
        """No exit recorded and the pipes intact (subclasses may look further)."""
        return self._exit is None and not self._channel.broken

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
            if self._channel.drain_failed and self._exit is None:
                # An earlier call's abandoned request never came back (see
                # drain_abandoned): the worker is alive but useless.
                self.kill()
            await self.settle()
            info = self._exit
            detail = "; ".join(part for part in (self.exit_detail(info),
                                                 "" if info else str(exc)) if part)
            raise WorkerCrashed(
                worker_id=self._worker_id, pid=self.pid,
                exit_code=info.exit_code if info else None,
                signal=info.signal if info else None, stderr_tail=self.stderr_tail(),
                command=command, session=session, detail=detail, host=self.host,
                launcher=self.remote_launcher,
            ) from None

    def time_out(self, timeout: float) -> None:
        """The owner's deadline for the call in flight passed: that call raises
        CallTimeout now and its request is abandoned (see :attr:`abandoned`)."""
        self._channel.time_out(timeout)

    @property
    def abandoned(self) -> bool:
        """A call was cancelled or timed out with its request in flight, and
        :meth:`drain_abandoned` may still give the worker back clean."""
        return self._channel.abandoned and self._exit is None

    async def drain_abandoned(self) -> str:
        """Have the worker abandon that request and read its one reply, within
        the spawn request's ``cancel_grace``; returns "cancelled" or "answered".
        Raises ``DrainFailed``: the worker must be killed."""
        return await self._channel.drain_abandoned()

    def kill(self) -> None:
        raise NotImplementedError

    # --- what subclasses implement ----------------------------------------------

    @property
    def remote_launcher(self) -> str | None:
        """The name of the launcher that runs this worker on another host, None
        when it runs here: a remote worker's ``pid`` is not a process of this
        host, so nothing here may signal it."""
        return None

    def exit_detail(self, info: ExitInfo | None) -> str:
        """What crash and start reports add about how the worker ended (a
        remote launcher's reading of its exit status); "" for nothing."""
        return ""

    async def stop(self, grace: float) -> ExitInfo:
        """Stop the worker and wait until it has exited: politely (the shutdown
        command, stdin closed) within ``grace`` seconds, then by force."""
        raise NotImplementedError

    async def settle(self) -> None:
        """After the stream ended: wait (bounded) until the exit status is known,
        so that the error raised says how the worker died. A subclass whose exit
        is recorded before its pipe ends needs nothing more."""

    # --- what subclasses report and use -----------------------------------------

    def record_exit(self, info: ExitInfo, *, abort: bool = True) -> bool:
        """The worker ended: keep how, wake the call in flight at once (unless
        ``abort`` is False: a process that exits on its own leaves its last
        bytes to be read, then EOF) and whoever waits for the exit. False, and
        nothing changes, when an exit was recorded already."""
        if self._exit is not None:
            return False
        self._exit = info
        if abort:
            self._channel.abort(f"{self._kind} {info.describe()}")
        self._exited.set()
        return True

    def record_stderr_line(self, line: str) -> None:
        """One line the worker wrote to stderr (kept for crash reports, clipped:
        the last line goes into error messages)."""
        if len(line) > _MAX_TAIL_LINE:
            line = f"{line[:_MAX_TAIL_LINE]}... [{len(line) - _MAX_TAIL_LINE} more characters]"
        self._tail.append(line)

    @property
    def can_stop_gracefully(self) -> bool:
        """Alive as far as known, its channel clean and no call in flight: it can
        be asked to shut down (:meth:`send_shutdown`)."""
        return self._exit is None and not self.dirty and not self._channel.busy

    async def send_shutdown(self) -> None:
        """Write the shutdown command; no reply is awaited (the worker exits).
        Raises ``PeerGone`` when the worker is gone already."""
        await self._channel.send_raw(_SHUTDOWN_FRAME)

    # --- the life of a worker ---------------------------------------------------

    @asynccontextmanager
    async def running(self, *, start_timeout: float, grace: float,
                      background: Sequence[Callable[[], Awaitable[object]]] = ()
                      ) -> AsyncIterator[None]:
        """Start the worker, run the block, stop it: what real and fake workers share.

        Starts the ``background`` tasks (they must never raise) in a nursery of
        their own; reads the hello within ``start_timeout``, or raises
        ``WorkerStartError`` built from the exit status and the stderr tail;
        runs the block; and on the way out, whatever happened, stops the worker
        with :meth:`stop`, shielded: with ``grace`` if it said hello and its
        channel is clean, at once otherwise (nobody is left to ask politely).
        A single exception (a start failure, or whatever the block raised)
        comes out as itself, not in a group (:func:`raise_sole_exception`).
        """
        try:
            async with trio.open_nursery() as nursery:
                for task in background:
                    nursery.start_soon(task)
                try:
                    await self._read_hello(start_timeout)
                    yield
                finally:
                    graceful = self._hello is not None and not self.dirty
                    with trio.CancelScope(shield=True):
                        await self.stop(grace if graceful else 0.0)
        except BaseExceptionGroup as group:
            # The background tasks never raise: see raise_sole_exception.
            raise_sole_exception(group)

    def _start_error(self, reason: str, said: ProtocolError | None = None) -> WorkerStartError:
        info = self._exit
        detail = self.exit_detail(info) if info is not None else ""
        return WorkerStartError(
            f"{reason} ({detail})" if detail else reason,
            worker_id=self._worker_id, pid=self._spawned_pid,
            exit_code=info.exit_code if info else None,
            signal=info.signal if info else None,
            stderr_tail=self.stderr_tail(), argv=self._argv, launcher=self.remote_launcher,
            remote_type=said.remote_type if said else None,
            remote_message=said.remote_message if said else None,
        )

    async def _read_hello(self, start_timeout: float) -> Hello:
        with trio.move_on_after(start_timeout):
            try:
                self._hello = await self._channel.read_hello()
                return self._hello
            except PeerGone:
                await self.settle()
                exit_ = "running" if self._exit is None else self._exit.describe()
                raise self._start_error(f"{self._kind} {exit_} before its hello") from None
            except ProtocolError as exc:
                # Usually an error hello: the runtime reported a start failure and
                # is exiting; wait (bounded) for its status and last stderr lines.
                await self.settle()
                raise self._start_error(f"bad hello: {exc}", exc) from exc
        raise self._start_error(f"no hello within start_timeout={start_timeout:g}s")
