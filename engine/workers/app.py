"""The handler-registry API that worker apps use (design section 5).

A worker app is a module holding an :class:`App`; the runtime
(:mod:`engine.workers.runtime`) imports it, announces its commands in the hello
and dispatches each request to the registered handler::

    from engine.workers.app import App, Context

    app = App("myapp")

    @app.command("echo")
    def echo(args, ctx: Context):
        return args

    @app.command("incr", args={"type": "object",
                               "properties": {"n": {"type": "integer"}},
                               "required": ["n"]})
    def incr(args, ctx: Context):
        ctx.state["total"] = ctx.state.get("total", 0) + args["n"]
        return ctx.state["total"]

``args=`` declares the shape of the command's arguments (a small subset of
JSON Schema, see :mod:`engine.workers.schema`): the hello carries it, and
``engine campaign`` calls the command with arguments drawn from it. It is
checked when the app is imported and never enforced on calls.

Handlers are plain (synchronous) functions ``handler(args, ctx)``: ``args`` is
the request's JSON ``args`` value and the return value must be JSON-serialisable.
An exception becomes an ``ok: false`` response carrying its type, message and
traceback; the worker keeps serving.

When the caller gives up on a call (it was cancelled, or its ``call_timeout``
passed), the parent asks the worker to abandon the request and the runtime
raises :class:`RequestAbandoned` inside the running handler, wherever it is
(``time.sleep`` included). A handler interrupted half-way may leave its
session's state half-updated: keep it consistent with ``try``/``finally`` (or
update it only once the work is done). A handler that swallows the exception
keeps running, and its worker is killed once ``cancel_grace`` has passed.

This module runs inside every worker, so it imports only the standard library
and nothing costly: worker start-up time is a benchmarked property.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    Handler = Callable[[Any, "Context"], Any]
    H = TypeVar("H", bound=Handler)
    StartHook = Callable[[], object]
    S = TypeVar("S", bound=StartHook)

__all__ = ["BUILTIN_COMMANDS", "App", "Context", "RequestAbandoned", "SessionStore",
           "current_context", "current_session", "enter_context", "rss_mb"]

#: Commands every worker answers itself; an app may not register these names.
BUILTIN_COMMANDS = ("ping", "health", "stats", "cleanup_session", "shutdown")
#: Served by the runtime too, but not listed in the hello (run_sync's).
RESERVED_COMMANDS = (*BUILTIN_COMMANDS, "engine.run_sync")

# Code-object flags of ``async def`` functions and async generators. Checked by
# hand because importing ``inspect`` would cost more than the whole runtime.
_ASYNC_CODE_FLAGS = 0x0080 | 0x0200  # CO_COROUTINE | CO_ASYNC_GENERATOR


class RequestAbandoned(BaseException):
    """Raised inside a running handler when the parent abandoned its request.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except
    Exception`` in a handler does not swallow it. Let it propagate: the worker
    answers the request with a ``Cancelled`` error and goes on serving, with
    every session's state kept. Catch it only to clean up (or use ``finally``),
    then re-raise.
    """

    def __init__(self, request_id: int) -> None:
        super().__init__(f"request {request_id} was abandoned by the parent "
                         "(its caller was cancelled or timed out)")
        self.request_id = request_id


class SessionStore:
    """Per-session state dicts, plus one shared dict for calls without a session."""

    __slots__ = ("_anonymous", "_sessions")

    def __init__(self) -> None:
        self._sessions: dict[str, dict[str, Any]] = {}
        self._anonymous: dict[str, Any] = {}

    def get(self, session: str | None) -> dict[str, Any]:
        """The state of ``session``, created empty on first use."""
        if session is None:
            return self._anonymous
        state = self._sessions.get(session)
        if state is None:
            state = self._sessions[session] = {}
        return state

    def drop(self, session: str | None) -> bool:
        """Forget ``session``'s state; True if there was any. ``None`` clears the shared dict."""
        if session is None:
            had_state = bool(self._anonymous)
            self._anonymous = {}
            return had_state
        return self._sessions.pop(session, None) is not None

    def __contains__(self, session: object) -> bool:
        return session in self._sessions

    def __len__(self) -> int:
        """Number of named sessions holding state (the anonymous dict is not counted)."""
        return len(self._sessions)


class Context:
    """What a handler knows about the call it serves.

    ``state`` is created lazily, so a command that never touches it (``ping`` in
    a session, say) does not make the worker hold an empty session.
    """

    __slots__ = ("_state", "_store", "_writer", "request_id", "session", "worker_id")

    # Positional parameters too: the runtime builds one per request, and
    # keyword arguments would cost it a third more.
    def __init__(
        self, session: str | None, worker_id: str, request_id: int,
        store: SessionStore, writer: Callable[[bytes], None],
    ) -> None:
        self.session = session
        self.worker_id = worker_id
        self.request_id = request_id
        self._store = store
        self._writer = writer
        self._state: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        """This session's state dict (shared by all calls whose session is None)."""
        if self._state is None:
            self._state = self._store.get(self.session)
        return self._state

    def write_raw(self, data: bytes) -> None:
        """Write ``data`` as is onto the frame channel. FAULT INJECTION ONLY.

        Anything but a whole frame corrupts the stream: the parent reports a
        ``ProtocolError`` and replaces the worker. Used by the ``garbage``
        handler of the default app to test exactly that.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_raw needs bytes, got {type(data).__name__}")
        self._writer(bytes(data))

    def __repr__(self) -> str:
        return (f"Context(worker_id={self.worker_id!r}, request_id={self.request_id}, "
                f"session={self.session!r})")


# The context of the run_sync call this worker is serving (None between calls).
_current: Context | None = None


def enter_context(ctx: Context | None) -> Context | None:
    """Make ``ctx`` the current context (the runtime, around a run_sync
    function); returns the previous one, to restore."""
    global _current
    previous, _current = _current, ctx
    return previous


def current_context() -> Context:
    """Inside a function run by ``run_sync``: the :class:`Context` of that call
    (its ``session``, ``worker_id``, ``request_id`` and ``state``).

    Raises RuntimeError anywhere else (in the parent, or between calls)."""
    ctx = _current
    if ctx is None:
        raise RuntimeError("current_context() works only inside a function that "
                           "pool.run_sync() or engine.run_sync() runs in a worker")
    return ctx


def current_session() -> dict[str, Any]:
    """Inside a function run by ``pool.run_sync(fn, session=...)``: that
    session's state dict, kept in the worker between calls (the same dict a
    command handler sees as ``ctx.state``; calls without a session share one
    anonymous dict). Raises RuntimeError outside such a function."""
    return current_context().state


class App:
    """A named registry of command handlers; one per worker app module."""

    __slots__ = ("_handlers", "_schemas", "_start_hooks", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"App name must be a non-empty string, got {name!r}")
        self.name = name
        self._handlers: dict[str, Handler] = {}
        self._schemas: dict[str, Any] = {}
        self._start_hooks: list[StartHook] = []

    def command(self, name: str | None = None, *, args: Any = None) -> Callable[[H], H]:
        """Decorator registering a handler under ``name`` (default: the function's name).

        ``args``: the shape of its arguments (:mod:`engine.workers.schema`), or
        None for undeclared."""
        if callable(name):
            raise TypeError("use @app.command() or @app.command('name'), with parentheses")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"command name must be a non-empty string, got {name!r}")

        def register(handler: H) -> H:
            self.add_command(name or handler.__name__, handler, args=args)
            return handler

        return register

    def add_command(self, name: str, handler: Handler, *, args: Any = None) -> None:
        """Register ``handler`` under ``name`` (the non-decorator form)."""
        if name in RESERVED_COMMANDS:
            raise ValueError(f"{name!r} is a built-in command; choose another name")
        if name in self._handlers:
            raise ValueError(f"command {name!r} is already registered in app {self.name!r}")
        _check_handler(name, handler)
        if args is not None:
            # Imported only by apps that declare shapes: start-up is benchmarked.
            from engine.workers.schema import check_schema

            check_schema(args, f"command {name!r} args")
        self._handlers[name] = handler
        if args is not None:
            self._schemas[name] = args

    def on_start(self, hook: S) -> S:
        """Decorator: run ``hook()`` once before the worker says hello.

        An exception there is a start failure: the worker sends an error hello
        and exits, and the parent reports ``WorkerStartError``.
        """
        if not callable(hook):
            raise TypeError(f"on_start needs a callable, got {hook!r}")
        self._start_hooks.append(hook)
        return hook

    def run_start_hooks(self) -> None:
        for hook in self._start_hooks:
            hook()

    def commands(self) -> list[str]:
        """Names of the app's commands, in registration order (built-ins excluded)."""
        return list(self._handlers)

    def schemas(self) -> dict[str, Any]:
        """The declared argument shapes, by command (undeclared commands absent)."""
        return dict(self._schemas)

    def handler(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def __repr__(self) -> str:
        return f"App({self.name!r}, commands={self.commands()!r})"


def _check_handler(name: str, handler: object) -> None:
    if not callable(handler):
        raise TypeError(f"handler for {name!r} must be callable, got {handler!r}")
    code = getattr(handler, "__code__", None)
    flags = getattr(code, "co_flags", 0)
    if flags & _ASYNC_CODE_FLAGS:
        raise TypeError(
            f"handler for {name!r} is async; worker handlers must be plain functions "
            "(each worker serves one call at a time)"
        )


def rss_mb() -> float:
    """Resident set size of this process in MiB (current where the OS tells us)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1048576
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # No /proc (macOS, BSD): only the peak is available. Imported lazily because
    # Linux never needs it.
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB elsewhere.
    return peak / 1048576 if sys.platform == "darwin" else peak / 1024
