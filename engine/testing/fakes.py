"""Scripted fake workers that speak the real wire protocol over in-memory streams.

A :class:`FakeWorker` is a :class:`~engine.process.handle.WorkerHandle` whose
"process" is a Trio task (the *peer*) on the far side of two in-memory pipes
(:mod:`engine.testing.memory_pipe`: the peer decodes each request as it is
written, and the parent waits for the reply as on a real pipe, so a call costs
about what the framing costs).
The parent side is the real :class:`~engine.process.channel.FramedChannel`, and
the peer decodes requests with the real :class:`~engine.protocol.FrameDecoder`
and answers with :func:`~engine.protocol.encode_frame`, so the pool under test
sees exactly the bytes a subprocess would send, only faster and scriptable:
start delays, crashes before or after the hello, bad hellos, hangs, garbage,
truncated, fragmented or mis-numbered replies, per-command handlers. Sleeping
handlers use ``trio.sleep``, so a ``MockClock`` drives them.

Process semantics are kept where the pool depends on them: :meth:`FakeWorker.kill`
makes ``is_alive()`` false at once and wakes a call in flight with
``WorkerCrashed``; the peer handles one request at a time, exits on stdin EOF or
``shutdown``; a crash closes its end of both pipes.

Abandoned requests (design section 8) work as in the real runtime: the peer
reads stdin while a handler runs, and the abandon of the running request
cancels the handler (after ``Script.abandon_delay``), which is answered
``Cancelled``; a request whose abandon is already buffered behind it is
answered ``Cancelled`` without running; an abandon for an answered request is
ignored. A handler that sets ``ctx.stubborn`` (``hang``, ``sleep`` with
``"stubborn": true``), or any handler under ``Script(on_abandon="never")``,
does not give the request back: the pool kills the worker after its
``cancel_grace``.

Use :class:`FakeWorkerFactory` as ``open_pool(worker_factory=factory, ...)``::

    factory = FakeWorkerFactory(Script(start_delay=0.5))
    factory.plan.append(Script(crash_before_hello=3))   # the next spawn fails
    async with open_pool(worker_factory=factory, size=2) as pool:
        ...
    assert all(not w.is_alive() for w in factory.workers)

Kill and inspect fakes from inside the Trio run (``kill()`` wakes tasks).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import signal
import traceback
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import attrs
import trio
import trio.testing

from engine.errors import ProtocolError
from engine.process.channel import FramedChannel, PeerGone
from engine.process.channel_worker import ChannelWorker
from engine.process.handle import ExitInfo, SpawnRequest
from engine.protocol import (
    CANCELLED,
    HEADER_SIZE,
    PICKLE_CODEC,
    PICKLE_COMMAND,
    Abandon,
    FrameDecoder,
    Request,
    encode_frame,
    error_response,
    hello_message,
    ok_response,
    parse_incoming,
)
from engine.testing.memory_pipe import MemoryPipe, pipe_pair
from engine.workers.app import Context, SessionStore
from engine.workers.pickled import make_handler
from engine.workers.programs import object_args

__all__ = [
    "DEFAULT_COMMANDS",
    "NO_REPLY",
    "FakeContext",
    "FakeExit",
    "FakeWorker",
    "FakeWorkerFactory",
    "Handler",
    "ReplyMode",
    "Script",
    "garbage_frame",
    "one_byte_writes",
]

ReplyMode = Literal["normal", "fragmented", "wrong_id", "garbage", "truncated", "hang", "crash"]
"""How the peer answers a request:

* ``normal``: one write of one well-formed frame;
* ``fragmented``: the same frame, one byte per write (the parent reads it in pieces);
* ``wrong_id``: a well-formed reply whose id is not the request's (``ProtocolError``);
* ``garbage``: a frame whose body is not JSON (``ProtocolError``);
* ``truncated``: the first half of the frame, then the peer dies (``WorkerCrashed``);
* ``hang``: never answer (a ``CallTimeout``, or a kill, ends the call);
* ``crash``: die without answering (``WorkerCrashed``).
"""

NO_REPLY: Any = object()
"""Return this from a handler that wrote its own reply (or wants none)."""


class FakeExit(Exception):
    """Raise from a handler to make the fake process exit with ``code``."""

    def __init__(self, code: int = 1) -> None:
        super().__init__(f"fake worker exits with code {code}")
        self.code = code


Handler = Callable[["FakeContext", Any], Awaitable[Any]]
"""``async def handler(ctx, args) -> result``; raise to answer ``ok: false``."""


def one_byte_writes(frame: bytes) -> list[bytes]:
    """A ``Script.split`` that writes every byte on its own."""
    return [frame[i:i + 1] for i in range(len(frame))]


def garbage_frame(body: bytes = b"\x00not json\xff") -> bytes:
    """A frame with a correct length prefix and a body that is not JSON."""
    return len(body).to_bytes(HEADER_SIZE, "big") + body


REPLY_MODES = frozenset(typing.get_args(ReplyMode))


def _reply_mode(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in REPLY_MODES:
        raise ValueError(f"Script.{attribute.name}={value!r} is not a reply mode; the modes: "
                         f"{', '.join(sorted(REPLY_MODES))}")


def _faults(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    for command, mode in dict(value).items():
        if mode not in REPLY_MODES:
            raise ValueError(f"Script.faults[{command!r}]={mode!r} is not a reply mode; the "
                             f"modes: {', '.join(sorted(REPLY_MODES))}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"Script.{attribute.name} must be >= 0 seconds, got {value!r}")


def _handlers(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    for command, handler in dict(value).items():
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"Script.handlers[{command!r}] must be `async def handler(ctx, args)` (a "
                f"fake's handler: context first, awaited), got {handler!r}; an app's "
                "`def handler(args, ctx)` runs in real workers, not in fakes")


@attrs.frozen(kw_only=True)
class Script:
    """What one fake worker does. Times are Trio seconds (virtual under MockClock).

    ``start_delay``: sleep before the hello. ``crash_before_hello``: exit with this
    code instead of sending the hello (the pool sees ``WorkerStartError``).
    ``bad_hello``: send a frame that is not a valid hello, then wait to be killed.
    ``crash_after``: exit with ``crash_code`` this long after the hello, whatever
    it is doing. ``reply_mode``: how every request is answered; ``faults`` maps a
    command to the mode for that command only. ``split``: how each outgoing frame
    is cut into writes (e.g. :func:`one_byte_writes`). ``handlers`` add to or
    override :data:`DEFAULT_COMMANDS`. ``program_list``: ``list_programs`` answers
    the current map (``"map"``) or the legacy bare list (``"legacy"``).
    ``commands``: the hello's command list (default: every handler's name).
    ``schemas``: the hello's argument shapes by command (default: none).
    ``on_abandon``: ``"yield"`` (a running handler whose request is abandoned
    is cancelled ``abandon_delay`` seconds later, as a cooperative handler
    would stop) or ``"never"`` (every handler ignores it, like one stuck in C).
    """

    start_delay: float = attrs.field(default=0.0, validator=_not_negative)
    crash_before_hello: int | None = None
    bad_hello: bool = False
    crash_after: float | None = attrs.field(default=None, validator=_not_negative)
    crash_code: int = 1
    reply_mode: ReplyMode = attrs.field(default="normal", validator=_reply_mode)
    faults: Mapping[str, ReplyMode] = attrs.field(factory=dict, validator=_faults)
    split: Callable[[bytes], Sequence[bytes]] | None = None
    handlers: Mapping[str, Handler] = attrs.field(factory=dict, validator=_handlers)
    program_list: Literal["map", "legacy"] = "map"
    app: str = "fake"
    commands: tuple[str, ...] | None = None
    schemas: Mapping[str, Any] = attrs.field(factory=dict)
    stderr_lines: tuple[str, ...] = ()
    on_abandon: Literal["yield", "never"] = attrs.field(
        default="yield", validator=attrs.validators.in_(("yield", "never")))
    abandon_delay: float = attrs.field(default=0.0, validator=_not_negative)

    def evolve(self, **changes: Any) -> Script:
        return attrs.evolve(self, **changes)


@attrs.define(eq=False)
class FakeContext:
    """What a handler sees: the request, its session's state, the worker."""

    request: Request
    worker: FakeWorker
    _peer: _Peer
    #: Set by a handler that ignores the abandon of its request (``hang``).
    stubborn: bool = False

    @property
    def session(self) -> str | None:
        return self.request.session

    @property
    def state(self) -> dict[str, Any]:
        """The per-session state dict of this fake worker (anonymous calls share one)."""
        return self.worker.sessions.setdefault(self.request.session, {})

    async def write_raw(self, data: bytes) -> None:
        """Write bytes onto the frame channel, as the ``garbage`` command does."""
        await self._peer.write(data)

    def log(self, line: str) -> None:
        """A line on the worker's stderr (shows up in ``stderr_tail()``)."""
        self.worker.record_stderr_line(line)


# --- default handlers (the fake counterpart of engine.workers.programs) -------------


async def _ping(ctx: FakeContext, args: Any) -> Any:
    return {"pid": ctx.worker.pid, "worker_id": ctx.worker.worker_id,
            "app": ctx.worker.script.app}


async def _health(ctx: FakeContext, args: Any) -> Any:
    return {"status": "ok", "rss_mb": 10.0, "sessions": len(ctx.worker.sessions),
            "calls": ctx.worker.calls}


async def _stats(ctx: FakeContext, args: Any) -> Any:
    return {"calls": ctx.worker.calls, "sessions": len(ctx.worker.sessions),
            "pid": ctx.worker.pid, "worker_id": ctx.worker.worker_id}


async def _cleanup_session(ctx: FakeContext, args: Any) -> Any:
    session = object_args(args, "cleanup_session").get("session", ctx.session)
    return {"removed": ctx.worker.sessions.pop(session, None) is not None}


async def _shutdown(ctx: FakeContext, args: Any) -> Any:
    ctx._peer.stopping = True
    return {"shutting_down": True}


async def _echo(ctx: FakeContext, args: Any) -> Any:
    return args


async def _sleep(ctx: FakeContext, args: Any) -> Any:
    args = object_args(args, "sleep")
    seconds = args.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"sleep: 'seconds' must be a number >= 0, got {seconds!r}")
    ctx.stubborn = args.get("stubborn", False) is True
    await trio.sleep(seconds)
    return {"slept": seconds}


async def _fail(ctx: FakeContext, args: Any) -> Any:
    raise RuntimeError(object_args(args, "fail").get("message", "fail requested"))


async def _crash(ctx: FakeContext, args: Any) -> Any:
    raise FakeExit(int(object_args(args, "crash").get("code", 1)))


async def _hang(ctx: FakeContext, args: Any) -> Any:
    ctx.stubborn = True  # only a kill ends it, as in the default app
    await trio.sleep_forever()


async def _noise(ctx: FakeContext, args: Any) -> Any:
    text = str(object_args(args, "noise").get("text", "noise"))
    ctx.log(text)
    return {"printed": len(text)}


async def _garbage(ctx: FakeContext, args: Any) -> Any:
    data = str(object_args(args, "garbage").get("data", "garbage")).encode()
    await ctx.write_raw(data)
    return {"written": len(data)}


def _programs(ctx: FakeContext) -> dict[str, dict[str, Any]]:
    programs: dict[str, dict[str, Any]] = ctx.state.setdefault("programs", {})
    return programs


async def _create_program(ctx: FakeContext, args: Any) -> Any:
    args = object_args(args, "create_program")
    program_id = args.get("id")
    if not isinstance(program_id, str) or not program_id:
        raise ValueError(f"create_program: 'id' must be a non-empty string, got {program_id!r}")
    if program_id in _programs(ctx):
        raise ValueError(f"create_program: program {program_id!r} already exists")
    signature = args.get("signature", {"inputs": ["x"], "outputs": ["x"]})
    program = {"id": program_id, "signature": signature,
               "handler": args.get("handler", "echo")}
    _programs(ctx)[program_id] = program
    return dict(program)


async def _execute_program(ctx: FakeContext, args: Any) -> Any:
    args = object_args(args, "execute_program")
    program = _programs(ctx).get(args.get("id"))
    if program is None:
        raise LookupError(f"no program {args.get('id')!r}")
    inputs = args.get("inputs", {})
    return {"outputs": dict(zip(program["signature"]["outputs"],
                                [inputs.get(n) for n in program["signature"]["inputs"]],
                                strict=False))}


async def _list_programs(ctx: FakeContext, args: Any) -> Any:
    programs = [dict(p) for p in _programs(ctx).values()]
    if ctx.worker.script.program_list == "legacy":
        return programs
    return {"programs": programs, "total_count": len(programs)}


async def _get_program_info(ctx: FakeContext, args: Any) -> Any:
    program = _programs(ctx).get(object_args(args, "get_program_info").get("id"))  # type: ignore[arg-type]
    if program is None:
        raise LookupError(f"no program {args.get('id')!r}")
    return dict(program)


async def _delete_program(ctx: FakeContext, args: Any) -> Any:
    program_id = object_args(args, "delete_program").get("id")
    if _programs(ctx).pop(program_id, None) is None:  # type: ignore[arg-type]
        raise LookupError(f"no program {program_id!r}")
    return {"deleted": True}


DEFAULT_COMMANDS: Mapping[str, Handler] = {
    "ping": _ping, "health": _health, "stats": _stats, "cleanup_session": _cleanup_session,
    "shutdown": _shutdown, "echo": _echo, "sleep": _sleep, "fail": _fail, "crash": _crash,
    "hang": _hang, "noise": _noise, "garbage": _garbage, "create_program": _create_program,
    "execute_program": _execute_program, "list_programs": _list_programs,
    "get_program_info": _get_program_info, "delete_program": _delete_program,
}
"""The fake app: the built-ins plus the default app's load, fault and program commands."""


# --- the fake process ------------------------------------------------------------------

_EOF: Any = object()  # stdin closed


class _FakeSessions(SessionStore):
    """The worker-side session store over a fake's ``sessions`` dict, so that a
    function run by ``run_sync`` finds its state with ``current_session()``."""

    def __init__(self, sessions: dict[str | None, dict[str, Any]]) -> None:
        super().__init__()
        self.sessions = sessions

    def get(self, session: str | None) -> dict[str, Any]:
        return self.sessions.setdefault(session, {})

    def drop(self, session: str | None) -> bool:
        return bool(self.sessions.pop(session, None))


def _format_exception(exc: BaseException, skip_frames: int = 0) -> str:
    return "".join(traceback.format_exception(exc))


class _Peer:
    """The fake worker process: a task reading requests and writing replies.

    A worker whose spawn request allows pickle frames (``run_sync``) runs the
    pickled function here, in this process and synchronously, with the real
    worker's handler (:mod:`engine.workers.pickled`), and answers with the
    same pickle frames; the script's reply modes apply to them too."""

    def __init__(self, worker: FakeWorker, stdin: MemoryPipe, stdout: MemoryPipe) -> None:
        self.worker = worker
        self.script = worker.script
        self.stdout = stdout
        self._stdin = stdin
        # A real worker reads stdin between calls, and while a handler runs
        # when signalled; here every write is decoded as it arrives.
        pickle_size = worker.request.pickle_frame_size
        self._decoder = FrameDecoder(worker.request.max_frame_size, pickle_size)
        self._run_pickled = make_handler(pickle_size, _format_exception) \
            if pickle_size else None
        self._store = _FakeSessions(worker.sessions)
        self._stdin_done = False
        stdin.consumer = self._on_stdin
        self.scope = trio.CancelScope()
        self.stopping = False
        self.handlers = {**DEFAULT_COMMANDS, **self.script.handlers}
        # What stdin brought and was not served yet, and the request running.
        self.inbox: list[Any] = []
        self._arrived = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.running_id = 0
        self.running_ctx: FakeContext | None = None
        self.running_scope: trio.CancelScope | None = None

    async def run(self) -> None:
        with self.scope:
            script = self.script
            if script.start_delay > 0:
                await trio.sleep(script.start_delay)
            for line in script.stderr_lines:
                self.worker.record_stderr_line(line)
            if script.crash_before_hello is not None:
                self.worker.record_stderr_line(f"fake worker: crashing before its hello "
                                               f"(code {script.crash_before_hello})")
                self.exit(script.crash_before_hello)
                return
            if script.bad_hello:
                await self.write(encode_frame({"id": 0, "ok": True, "result": "not a hello"}))
                await trio.sleep_forever()
            commands = list(script.commands if script.commands is not None else self.handlers)
            codecs = (PICKLE_CODEC,) if self._run_pickled is not None else ()
            await self.send(hello_message(self.worker.worker_id, self.worker.pid, script.app,
                                          commands, schemas=dict(script.schemas),
                                          codecs=codecs), "normal")
            async with trio.open_nursery() as nursery:
                if script.crash_after is not None:
                    nursery.start_soon(self._crash_later, script.crash_after)
                await self._serve()
                nursery.cancel_scope.cancel()

    async def _crash_later(self, delay: float) -> None:
        await trio.sleep(delay)
        self.worker.record_stderr_line(f"fake worker: crashing (code {self.script.crash_code})")
        self.exit(self.script.crash_code)

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                item = await self._next_item()
                if item is _EOF:
                    self.exit(0)  # stdin closed: the parent asks us to stop
                    return
                if isinstance(item, ProtocolError):
                    await self.send(error_response(0, "ProtocolError", str(item)), "normal")
                    self.exit(4)
                    return
                if type(item) is Abandon:
                    continue  # its request was answered already
                assert isinstance(item, Request)
                if any(type(m) is Abandon and m.id == item.id for m in self.inbox):
                    # Abandoned before it could start: answered, never run.
                    reply = error_response(item.id, CANCELLED,
                                           f"request {item.id} was abandoned before its "
                                           "handler started")
                    if await self.send(reply, self._mode(item)):
                        return
                    continue
                if await self._handle(item):
                    return

    def _on_stdin(self, data: bytes) -> None:
        """Bytes written to the fake's stdin (b"": EOF): whole messages go to
        the inbox, except the abandon of the running request, which stops it."""
        if self._stdin_done:
            return
        if not data:
            self._stdin_done = True
            self._put(_EOF)
            return
        try:
            self._decoder.feed(data)
            while (message := self._decoder.next_message()) is not None:
                item = parse_incoming(message)
                if type(item) is Abandon and item.id == self.running_id:
                    self._abandon_running()
                else:
                    self._put(item)
        except ProtocolError as exc:
            self._stdin_done = True
            self._put(exc)

    def _put(self, item: Any) -> None:
        self.inbox.append(item)
        self._arrived.set()

    async def _next_item(self) -> Any:
        while not self.inbox:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.inbox.pop(0)

    def _abandon_running(self) -> None:
        ctx, scope = self.running_ctx, self.running_scope
        if ctx is None or scope is None or ctx.stubborn or self.script.on_abandon == "never":
            return  # the handler does not give the request back
        delay = self.script.abandon_delay
        if delay <= 0:
            scope.cancel()
            return

        async def later() -> None:
            await trio.sleep(delay)
            scope.cancel()  # a no-op once the handler has finished

        assert self._nursery is not None
        self._nursery.start_soon(later)

    def _mode(self, request: Request) -> ReplyMode:
        return self.script.faults.get(request.command, self.script.reply_mode)

    async def _handle(self, request: Request) -> bool:
        """Serve one request; True when the fake process is gone."""
        worker = self.worker
        worker.calls += 1
        worker.requests.append(request)
        mode = self._mode(request)
        if mode == "hang":
            await trio.sleep_forever()
        if mode == "crash":
            self.exit(self.script.crash_code)
            return True
        if request.command == PICKLE_COMMAND and self._run_pickled is not None:
            # Synchronous, as in a real worker: nothing can abandon it midway.
            call = Context(request.session, worker.worker_id, request.id, self._store,
                           self.write_now)
            frame = b"".join(self._run_pickled(request.args, call).parts)
            return await self.send_frame(frame, mode)
        handler = self.handlers.get(request.command)
        if handler is None:
            reply = error_response(request.id, "UnknownCommand",
                                   f"unknown command {request.command!r} for fake app "
                                   f"{self.script.app!r}")
        else:
            ctx = FakeContext(request, worker, self)
            self.running_id, self.running_ctx = request.id, ctx
            result = NO_REPLY
            try:
                with trio.CancelScope() as self.running_scope:
                    result = await handler(ctx, request.args)
            except FakeExit as exc:
                self.exit(exc.code)
                return True
            except Exception as exc:
                reply = error_response(request.id, type(exc).__name__, str(exc),
                                       "".join(traceback.format_exception(exc)))
            else:
                if self.running_scope.cancelled_caught:
                    reply = error_response(request.id, CANCELLED,
                                           f"request {request.id} was abandoned by the "
                                           "parent; its handler was interrupted")
                elif result is NO_REPLY:
                    return False
                else:
                    reply = ok_response(request.id, result)
            finally:
                self.running_id, self.running_ctx, self.running_scope = 0, None, None
        if await self.send(reply, mode):
            return True
        if self.stopping:
            self.exit(0)
            return True
        return False

    async def send(self, message: dict[str, Any], mode: ReplyMode) -> bool:
        """Write one reply the way ``mode`` says; True if the peer died doing so."""
        if mode == "wrong_id":
            message = {**message, "id": message["id"] + 1000}
        return await self.send_frame(encode_frame(message, self.worker.request.max_frame_size),
                                     mode)

    async def send_frame(self, frame: bytes, mode: ReplyMode) -> bool:
        """Write one encoded reply the way ``mode`` says (``wrong_id`` is the
        message's: see :meth:`send`); True if the peer died doing so."""
        if mode == "garbage":
            frame = garbage_frame()
        if mode == "truncated":
            await self.write(frame[: max(1, len(frame) // 2)])
            self.worker.record_stderr_line("fake worker: died in the middle of a reply")
            self.exit(1)
            return True
        if mode == "fragmented":
            chunks: Sequence[bytes] = one_byte_writes(frame)
        elif self.script.split is not None:
            chunks = [c for c in self.script.split(frame) if c]
        else:
            chunks = [frame]
        for i, chunk in enumerate(chunks):
            if i:
                # Let the parent read what is there, so it sees the frame in pieces.
                await trio.testing.wait_all_tasks_blocked()
            await self.write(chunk)
        return False

    async def write(self, data: bytes) -> None:
        self.write_now(data)  # no checkpoint: a pipe write that fits doesn't block

    def write_now(self, data: bytes) -> None:
        try:
            self.stdout.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the parent closed its end; the process would get EPIPE and carry on

    def exit(self, code: int) -> None:
        # A process that exits on its own has already written whatever it wrote:
        # the parent reads it, then EOF (no abort, unlike a kill).
        self.worker._died(ExitInfo(exit_code=code, signal=None, reason="exited"), abort=False)

    def close_pipes(self) -> None:
        """The process is gone: its ends of stdin and stdout close."""
        self.scope.cancel()
        self.stdout.close_write()
        self._stdin.close_read()


class FakeWorker(ChannelWorker):
    """A :class:`~engine.process.handle.WorkerHandle` backed by a scripted peer task.

    Besides the protocol: ``script``, ``request`` (the SpawnRequest), ``sessions``
    (per-session state dicts), ``calls`` and ``requests`` (what it was asked),
    ``reaped`` (its factory context has exited: the "process" was waited for).
    """

    def __init__(self, request: SpawnRequest, script: Script, pid: int) -> None:
        to_child, child_stdin = pipe_pair()
        child_stdout, from_child = pipe_pair()
        channel = FramedChannel(to_child, from_child, worker_id=request.worker_id,
                                max_frame_size=request.max_frame_size, pid=lambda: pid,
                                cancel_grace=request.cancel_grace,
                                max_pickle_frame_size=request.pickle_frame_size)
        super().__init__(request.worker_id, channel, request.stderr_tail_lines,
                         kind="fake process", spawned_pid=pid)
        self.request = request
        self.script = script
        self._pid = pid
        self._to_child = to_child
        self.sessions: dict[str | None, dict[str, Any]] = {}
        self._peer = _Peer(self, child_stdin.pipe, child_stdout.pipe)
        self.calls = 0
        self.requests: list[Request] = []
        self.reaped = False

    # --- WorkerHandle -----------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the fake process now: ``is_alive()`` is False on return and a call in
        flight gets ``WorkerCrashed``. Call it from inside the Trio run."""
        self._died(ExitInfo(exit_code=None, signal=int(sig), reason="killed"))

    def exit_now(self, code: int = 1) -> None:
        """Make the fake process exit on its own now (not a kill): ``is_alive()``
        is False at once, while its channel stays clean until the parent reads
        the EOF (a real process seen dead by ``poll()`` before its pipe breaks)."""
        self._peer.exit(code)

    async def stop(self, grace: float) -> ExitInfo:
        """Like ProcessWorker.stop: shutdown + stdin EOF, wait ``grace``, then kill."""
        if self.ready and self.can_stop_gracefully:
            try:
                await self.send_shutdown()
            except PeerGone:
                pass  # the fake process already went away: kill() below settles it
            self._to_child.close()
            with trio.move_on_after(grace):
                await self.wait_exited()
        if self.exit_info is None:
            self.kill(signal.SIGTERM if not self.dirty else signal.SIGKILL)
        info = self.exit_info  # kill() records the exit at once
        assert info is not None
        return info

    # --- internals ----------------------------------------------------------------------

    def _died(self, info: ExitInfo, *, abort: bool = True) -> None:
        # Like ProcessWorker's exit watcher, a killed process wakes the call in
        # flight at once (abort) instead of leaving it to find EOF.
        if self.record_exit(info, abort=abort):
            self._peer.close_pipes()


class FakeWorkerFactory:
    """A ``worker_factory`` for ``open_pool`` that makes :class:`FakeWorker` s.

    ``script``: a :class:`Script` for every worker, or a callable picking one from
    the :class:`SpawnRequest` (its ``worker_id`` ends with ``<slot>.<generation>``).
    Scripts appended to ``plan`` are used first, one per spawn, in order.
    Every worker created is kept in ``workers`` (kill them, count them).
    """

    def __init__(self, script: Script | Callable[[SpawnRequest], Script] | None = None, *,
                 grace: float = 2.0, first_pid: int = 40_000) -> None:
        self.script = script if script is not None else Script()
        self.plan: collections.deque[Script] = collections.deque()
        self.grace = grace
        self.workers: list[FakeWorker] = []
        self._pids = itertools.count(first_pid)

    def __call__(self, request: SpawnRequest) -> AbstractAsyncContextManager[FakeWorker]:
        return self._open(request)

    def script_for(self, request: SpawnRequest) -> Script:
        if self.plan:
            return self.plan.popleft()
        if isinstance(self.script, Script):
            return self.script
        return self.script(request)

    @property
    def alive(self) -> list[FakeWorker]:
        """Workers whose fake process is running."""
        return [w for w in self.workers if w.exit_info is None]

    @property
    def unreaped(self) -> list[FakeWorker]:
        """Workers whose factory context has not exited yet (not yet waited for)."""
        return [w for w in self.workers if not w.reaped]

    def worker(self, worker_id: str) -> FakeWorker:
        for w in self.workers:
            if w.worker_id == worker_id:
                return w
        raise KeyError(worker_id)

    def kill_all(self) -> None:
        for w in self.alive:
            w.kill()

    @asynccontextmanager
    async def _open(self, request: SpawnRequest) -> AsyncIterator[FakeWorker]:
        worker = FakeWorker(request, self.script_for(request), next(self._pids))
        self.workers.append(worker)
        try:
            async with worker.running(start_timeout=request.start_timeout, grace=self.grace,
                                      background=(worker._peer.run,)):
                yield worker
        finally:
            worker.kill()  # no-op unless something above failed before the stop
            worker.reaped = True
