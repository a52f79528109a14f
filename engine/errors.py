"""The error taxonomy (design section 9).

Every error the library raises derives from :class:`EngineError`. Each carries
structured fields and a one-line message that says what went wrong and what to
do about it.

This module imports only the standard library at import time because the
worker-side runtime raises :class:`ProtocolError` through :mod:`engine.protocol`
and must not pay for (or depend on) Trio. :class:`LeaseReleased` must subclass
``trio.ClosedResourceError``, so it lives in :mod:`engine.pool.lease` and is
resolved lazily by the module ``__getattr__`` below (type checkers see its
precise type through ``engine.LeaseReleased`` or ``engine.pool.lease``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)

if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "AppStartFailed",
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "BridgeUnavailable",
    "CallTimeout",
    "ContractViolation",
    "EngineError",
    "LeaseReleased",  # noqa: F822 - provided lazily by __getattr__ below
    "PickleNotAllowed",
    "PoolClosed",
    "PoolSaturated",
    "PoolTimeout",
    "PoolUnavailable",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "RequestTooLarge",
    "ResponseShapeError",
    "RetriesExhausted",
    "SessionLost",
    "WorkerBusy",
    "WorkerCrashed",
    "WorkerError",
    "WorkerStartError",
]


def __getattr__(name: str) -> Any:
    if name == "LeaseReleased":
        from engine.pool.lease import LeaseReleased

        return LeaseReleased
    # "RemoteError[ValueError]" is the qualified name of a class made on demand
    # (see _RemoteErrorType.__getitem__): resolving it here lets pickle find it.
    if name.startswith("RemoteError[") and name.endswith("]"):
        builtin = _remote_builtin(name[len("RemoteError["):-1])
        if builtin is not None and builtin.__name__ == name[len("RemoteError["):-1]:
            return RemoteError[builtin]
    raise AttributeError(f"module 'engine.errors' has no attribute {name!r}")


class EngineError(Exception):
    """Base class of every error raised by engine."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- pool-level errors -------------------------------------------------------


class PoolClosed(EngineError):
    """The pool (or bridge) is closing or closed; no new checkouts are served."""

    def __init__(self, message: str = "", *, pool: str | None = None) -> None:
        self.pool = pool
        super().__init__(
            message
            or f"pool {pool or '<unnamed>'} is closed: open a new pool (or keep the "
            "`async with open_pool(...)` block open while calling it)"
        )


class PoolTimeout(EngineError):
    """No worker could be checked out before ``checkout_timeout`` expired."""

    def __init__(
        self, *, timeout: float, session: str | None = None, pool: str | None = None,
        waiting: int = 0, reason: str = "", busy: int | None = None,
        last_start_failure: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.session = session
        self.pool = pool
        self.waiting = waiting
        self.reason = reason
        #: Workers busy with calls when it timed out (None: not known).
        self.busy = busy
        #: The cause of the pool's last failed worker start, if any.
        self.last_start_failure = last_start_failure
        what = f"for session {session!r} " if session is not None else ""
        extra = f" ({reason})" if reason else ""
        failed = f"; last start failure: {last_start_failure}" if last_start_failure else ""
        if busy == 0:
            # Nobody holds a worker: the workers are not started (yet).
            advice = ("no worker is busy, so the workers are starting or failing to: "
                      "check the app and the last start failure, or raise start_timeout "
                      "and checkout_timeout if the workers start slowly")
        else:
            advice = "raise checkout_timeout or size, or shorten the calls holding workers"
        super().__init__(f"no worker became available {what}within {timeout:g}s{extra}"
                         f"{failed}; {advice}")


class PoolSaturated(EngineError):
    """More than ``max_waiters`` callers are already waiting."""

    def __init__(self, *, max_waiters: int, pool: str | None = None) -> None:
        self.max_waiters = max_waiters
        self.pool = pool
        super().__init__(
            f"{max_waiters} callers are already waiting for a worker (max_waiters); "
            "back off and retry, or raise max_waiters or size"
        )


class PoolUnavailable(EngineError):
    """The pool-wide circuit breaker is open: workers keep failing."""

    def __init__(self, *, reason: str, retry_at: float | None = None,
                 retry_in: float | None = None, pool: str | None = None) -> None:
        self.reason = reason
        self.retry_at = retry_at
        self.retry_in = retry_in
        self.pool = pool
        when = f"; a probe is allowed in {retry_in:.2f}s" if retry_in is not None else ""
        super().__init__(
            f"pool is unavailable: {reason}{when}; fix the worker app or its environment"
        )


# --- worker-level errors -----------------------------------------------------


class WorkerError(EngineError):
    """Base of errors tied to one worker; carries the worker's identity."""

    def __init__(
        self, message: str, *, worker_id: str | None = None, pid: int | None = None,
        command: str | None = None, session: str | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pid = pid
        self.command = command
        self.session = session
        super().__init__(message)


def _describe_exit(exit_code: int | None, signal: int | None) -> str:
    if signal is not None:
        import signal as _signal

        try:
            name = _signal.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        return f"killed by {name}"
    if exit_code is not None:
        return f"exited with code {exit_code}"
    return "died (exit status unknown)"


def _where(pid: int | None, host: str | None, launcher: str | None) -> str:
    """``pid 12`` for a local worker; where it ran and through what for a remote one."""
    if launcher is None:
        return f"pid {pid}"
    on = f" on {host}" if host else ""
    return f"pid {pid}{on}, a remote worker started through {launcher!r}"


class WorkerCrashed(WorkerError):
    """The worker process died (or its pipe closed) while it was in use.

    For a remote worker (``launcher`` is the remote launcher's name, ``host``
    the machine it ran on), ``exit_code``/``signal`` are those of the local
    launcher process (ssh passes the remote command's exit status on), and the
    message says what that status means; ``stderr_tail`` holds the launcher's
    own lines too.
    """

    def __init__(
        self, *, worker_id: str | None = None, pid: int | None = None,
        exit_code: int | None = None, signal: int | None = None,
        stderr_tail: tuple[str, ...] = (), command: str | None = None,
        session: str | None = None, detail: str = "", host: str | None = None,
        launcher: str | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = tuple(stderr_tail)
        self.host = host
        self.launcher = launcher
        how = _describe_exit(exit_code, signal)
        during = f" during {command!r}" if command else ""
        tail = f"; last stderr: {self.stderr_tail[-1]!r}" if self.stderr_tail else ""
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"worker {worker_id} ({_where(pid, host, launcher)}) {how}{during}{extra}{tail}; "
            "the pool replaces it: retry idempotent calls",
            worker_id=worker_id, pid=pid, command=command, session=session,
        )


class WorkerStartError(WorkerError):
    """A worker failed to start: it exited, stayed silent, or sent a bad hello.

    ``pid`` is the process spawned here (for a remote worker, its launcher's,
    named by ``launcher``). When the worker itself reported why (an error
    hello: its app did not import, an ``on_start`` hook raised),
    ``remote_type`` and ``remote_message`` are what it said."""

    def __init__(
        self, reason: str, *, worker_id: str | None = None, pid: int | None = None,
        exit_code: int | None = None, signal: int | None = None,
        stderr_tail: tuple[str, ...] = (), argv: tuple[str, ...] = (),
        launcher: str | None = None, remote_type: str | None = None,
        remote_message: str | None = None,
    ) -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = tuple(stderr_tail)
        self.argv = tuple(argv)
        self.launcher = launcher
        self.remote_type = remote_type
        self.remote_message = remote_message
        tail = f"; last stderr: {self.stderr_tail[-1]!r}" if self.stderr_tail else ""
        remote = f" (a remote worker started through {launcher!r})" if launcher else ""
        super().__init__(
            f"worker {worker_id}{remote} failed to start: {reason}{tail}; check the app "
            "module, the launcher and start_timeout",
            worker_id=worker_id, pid=pid,
        )


def _missing_module(message: str) -> str | None:
    """The name in a "No module named 'x'" message, if there is one."""
    start = message.find("No module named '")
    if start < 0:
        return None
    start += len("No module named '")
    end = message.find("'", start)
    return message[start:end] if end > start else None


class AppStartFailed(WorkerStartError):
    """No worker of the pool can start: checkouts fail at once with the cause.

    Raised by ``pool.call``, ``pool.checkout`` and ``pool.wait_ready`` when the
    pool has no live worker and the last start of each of its slots failed
    (started ones only, in a lazy pool). The message begins with the cause the
    worker reported (``ModuleNotFoundError: No module named 'x'``); ``app``,
    ``failures`` (failed starts so far) and the last start's fields are
    attributes, and that :class:`WorkerStartError` is the ``__cause__``. The
    pool keeps restarting its slots with backoff and serves again as soon as a
    worker starts. A :class:`WorkerStartError`, so existing handlers catch it;
    not retried by :class:`~engine.resilience.Retry`'s default."""

    def __init__(self, *, last: WorkerStartError, app: str, failures: int,
                 pool: str | None = None) -> None:
        self.app = app
        self.failures = failures
        self.pool = pool
        self.last = last
        cause, stage = start_cause(last)
        where = f" ({stage})" if stage else ""
        count = "1 failed start" if failures == 1 else f"{failures} failed starts"
        super().__init__(
            last.reason, worker_id=last.worker_id, pid=last.pid, exit_code=last.exit_code,
            signal=last.signal, stderr_tail=last.stderr_tail, argv=last.argv,
            launcher=last.launcher, remote_type=last.remote_type,
            remote_message=last.remote_message)
        module = app.partition(":")[0]
        missing = last.remote_type == "ModuleNotFoundError"
        gone = _missing_module(last.remote_message or "")
        names_app = gone is not None and (module == gone or module.startswith(gone + "."))
        # Where the workers look for modules: a local worker gets this
        # process's sys.path; a remote one nothing from here.
        path = ("(they get the parent's sys.path)" if last.launcher is None else
                f"on the far end of launcher {last.launcher!r} (remote workers get no "
                "sys.path from here: set the launcher's workdir or env, e.g. PYTHONPATH)")
        if stage.startswith("cannot load app") and missing and names_app:
            check = f"that {app!r} is the right module name and importable by the workers {path}"
        elif stage.startswith("cannot load app") and missing:
            check = (f"the import above: app {app!r} was found, but a module it imports "
                     f"is not importable by the workers {path}")
        elif stage.startswith("cannot load app"):
            # Found: its own code (an import-time error, a bad command
            # declaration) failed, not its name.
            check = f"the error above, in the code of app {app!r} (its module was found)"
        elif stage.startswith("on_start"):
            check = f"the on_start hooks of app {app!r}"
        elif last.remote_type:
            check = f"app {app!r} and the worker's command line"
        else:  # no word from the worker itself: it never got as far as the app
            check = ("the launcher, the Python interpreter, start_timeout and the worker's "
                     f"last stderr lines (in this error's cause), then app {app!r}")
        self.message = (
            f"{cause}{where}: no worker of pool {pool or '<unnamed>'} can start app {app!r} "
            f"({count}, the last by worker {last.worker_id}); check {check}. The pool keeps "
            "retrying and serves again once a worker starts")
        self.args = (self.message,)


def start_cause(error: WorkerStartError) -> tuple[str, str]:
    """``(cause, stage)`` of a failed start: the exception the worker reported
    (``"ModuleNotFoundError: No module named 'x'"``) and where it happened
    (``"cannot load app 'x'"``), or the parent's own reason and ``""``."""
    kind, said = error.remote_type, error.remote_message
    if not kind:
        # No word from the worker itself: its last stderr line is usually the
        # decisive one (ssh's "Connection refused", "can't cd to ...").
        tail = f" (last stderr: {error.stderr_tail[-1]!r})" if error.stderr_tail else ""
        return error.reason + tail, ""
    said = said or ""
    # The worker's message ends with "<type>: <message>" after its stage.
    at = said.find(f"{kind}: ")
    if at < 0:
        return f"{kind}: {said}", ""
    return said[at:], said[:at].rstrip(": ")


class CallTimeout(WorkerError):
    """A call did not get its reply within its timeout (``call_timeout``, or the
    call's own ``timeout``).

    ``outcome`` says what became of the worker, and the message says it too:

    * ``"abandoned"``: the worker was asked to abandon the request; it is kept,
      with its sessions, if it gives the request back within ``cancel_grace``,
      else killed and replaced;
    * ``"late"``: the reply came after the deadline and was dropped; the worker
      is kept, with its sessions;
    * ``"unsent"``: the request was never sent; the worker is kept;
    * ``"killed"``: the worker is killed and replaced (``cancel_grace=0``, or
      it broke).
    """

    def __init__(
        self, *, timeout: float, worker_id: str | None = None, pid: int | None = None,
        command: str | None = None, session: str | None = None,
        outcome: str = "killed", cancel_grace: float = 0.0,
    ) -> None:
        self.timeout = timeout
        self.outcome = outcome
        if outcome == "late":
            what = f"got its reply only after its {timeout:g}s deadline; the reply was " \
                   "dropped and the worker is kept, with its sessions"
        else:
            fate = {
                "abandoned": "the worker was asked to abandon the request: it is kept, "
                             "with its sessions, if it gives the request back within "
                             f"cancel_grace={cancel_grace:g}s, else killed and replaced",
                "unsent": "the request was never sent; the worker is kept, with its "
                          "sessions",
            }.get(outcome, "the worker is killed and replaced")
            what = f"got no reply within {timeout:g}s; {fate}"
        super().__init__(
            f"call {command!r} on worker {worker_id} (pid {pid}) {what}: raise the "
            "call's timeout (or the pool's call_timeout) if the command is legitimately slow",
            worker_id=worker_id, pid=pid, command=command, session=session,
        )


class ProtocolError(WorkerError):
    """A frame or envelope broke the wire protocol; the worker is replaced.

    An error hello (the worker could not start) is one too: ``remote_type`` and
    ``remote_message`` then hold what the worker reported."""

    def __init__(self, message: str, *, worker_id: str | None = None,
                 pid: int | None = None, command: str | None = None,
                 remote_type: str | None = None, remote_message: str | None = None) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        super().__init__(message, worker_id=worker_id, pid=pid, command=command)


class WorkerBusy(WorkerError):
    """``affinity="fail_fast"``: the session's worker is busy."""

    def __init__(self, *, session: str, worker_id: str | None = None,
                 pid: int | None = None) -> None:
        super().__init__(
            f"worker {worker_id} bound to session {session!r} is busy "
            "(affinity='fail_fast'); retry later or use affinity='strict'",
            worker_id=worker_id, pid=pid, session=session,
        )


class SessionLost(WorkerError):
    """The worker holding a session's state died or was retired: the state is gone."""

    def __init__(self, *, session: str, worker_id: str | None = None,
                 pid: int | None = None, reason: str = "worker died") -> None:
        # Reasons written for logs often name the worker already ("worker w1
        # did not give ... back"): said once here.
        prefix = f"worker {worker_id} "
        if worker_id is not None and reason.startswith(prefix):
            reason = reason[len(prefix):]
        self.reason = reason
        super().__init__(
            f"session {session!r} lost its state: worker {worker_id} {reason}; the "
            "session is unbound, so the next call starts a fresh session state",
            worker_id=worker_id, pid=pid, session=session,
        )


# --- other errors ------------------------------------------------------------


class _RemoteErrorType(type):
    """RemoteError's metaclass: it makes ``RemoteError[ValueError]`` an expression."""

    def __getitem__(cls, builtin: type[Exception]) -> type[RemoteError]:
        """``RemoteError[ValueError]``: the RemoteError class that is also a ``ValueError``.

        Made once per built-in and cached. Raises ``TypeError`` for anything but
        a built-in exception class that such a class can be made of.
        """
        made = _REMOTE_CLASSES.get(builtin)
        if made is not None:
            return made
        name = getattr(builtin, "__name__", "")
        mirrored = _remote_builtin(name)
        if mirrored is not builtin:
            import builtins

            if getattr(builtins, name, None) is not builtin or not (
                    isinstance(builtin, type) and issubclass(builtin, BaseException)):
                raise TypeError("RemoteError[...] takes a built-in exception class such as "
                                f"ValueError, not {builtin!r}")
            instead = "RemoteError" if mirrored is None else f"RemoteError[{mirrored.__name__}]"
            raise TypeError(f"there is no RemoteError[{name}]: a handler's {name} is raised "
                            f"as {instead}")
        made = _make_remote_class(builtin)
        assert made is not None  # _remote_builtin only returns classes that work
        return made


class RemoteError(EngineError, metaclass=_RemoteErrorType):
    """The worker answered ``ok: false``: the handler raised or the command is unknown.

    ``type`` is the name of the handler's exception class and ``remote_message``
    its message. When that name is a built-in exception (``ValueError``,
    ``KeyError``, ...), the error raised is also an instance of that built-in:
    it is a ``RemoteError[ValueError]``, so ``except ValueError`` catches a
    handler's ``ValueError`` as it would in-process, and ``except RemoteError``
    still catches every handler failure. ``args`` is ``(remote_message,)``. The
    worker's traceback rides along as ``__cause__`` (a :class:`RemoteTraceback`),
    so printing the error shows the remote frames too.
    """

    def __init__(
        self, *, type: str, message: str, traceback: str | None = None,
        command: str | None = None, worker_id: str | None = None,
        session: str | None = None,
    ) -> None:
        self.type = type
        self.remote_message = message
        self.traceback = traceback
        self.command = command
        self.worker_id = worker_id
        self.session = session
        super().__init__(f"{command!r} failed in worker {worker_id}: {type}: {message}")
        # What the handler's exception said: args as far as the wire carries them.
        self.args = (message,)

    @classmethod
    def from_reply(
        cls, *, type: str, message: str, traceback: str | None = None,
        command: str | None = None, worker_id: str | None = None,
        session: str | None = None,
    ) -> RemoteError:
        """The exception for a worker's error reply: ``RemoteError[builtin]`` when
        ``type`` names a built-in exception, else a plain ``RemoteError``; the
        remote traceback, if any, is its ``__cause__``."""
        builtin = _remote_builtin(type)
        klass = cls if builtin is None else RemoteError[builtin]
        error = klass(type=type, message=message, traceback=traceback, command=command,
                      worker_id=worker_id, session=session)
        if traceback:
            error.__cause__ = RemoteTraceback(traceback, worker_id=worker_id)
        return error

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.remote_message!r})"

    def __reduce__(self) -> Any:
        # The keyword-only constructor defeats BaseException's pickling (it
        # calls the class with ``args``): rebuild through from_reply instead.
        return (_rebuild_remote_error, (self.type, self.remote_message, self.traceback,
                                        self.command, self.worker_id, self.session))


class RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a :class:`RemoteError`.

    Never raised on its own: it exists so that printing the error (uncaught,
    ``traceback.print_exception``, ``logging.exception``) shows the frames of
    the handler that failed, above the caller's own frames (the way
    ``concurrent.futures`` shows a process pool's remote traceback).
    """

    def __init__(self, traceback: str, *, worker_id: str | None = None) -> None:
        super().__init__(traceback)
        self.traceback = traceback
        self.worker_id = worker_id

    def __str__(self) -> str:
        return (f"the handler's traceback in worker {self.worker_id}:\n"
                f'"""\n{self.traceback.rstrip()}\n"""')


def _rebuild_remote_error(type: str, message: str, traceback: str | None, command: str | None,
                          worker_id: str | None, session: str | None) -> RemoteError:
    return RemoteError.from_reply(type=type, message=message, traceback=traceback,
                                  command=command, worker_id=worker_id, session=session)


_REMOTE_CLASSES: dict[type, type[RemoteError]] = {}
_REMOTE_BUILTINS: dict[str, type[Exception] | None] = {}
# Never mirrored: a StopIteration raised out of a coroutine (``pool.call``)
# becomes a RuntimeError. (Nor are exception groups: they need their members.)
_NOT_MIRRORED = ("StopIteration", "StopAsyncIteration")


def _remote_builtin(name: str) -> type[Exception] | None:
    """The built-in exception class a remote ``type`` name stands for, if any:
    a subclass of Exception found by that name in ``builtins`` (or, when its own
    constructor cannot take a message, such as ``UnicodeDecodeError``, its
    nearest base that can), cached. None for every other name."""
    try:
        return _REMOTE_BUILTINS[name]
    except KeyError:
        pass
    import builtins

    found: type[Exception] | None = None
    candidate = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(candidate, type) and issubclass(candidate, Exception) \
            and not issubclass(candidate, BaseExceptionGroup) and name not in _NOT_MIRRORED:
        for base in candidate.__mro__:
            if base is Exception:
                break
            if _make_remote_class(base) is not None:
                found = base
                break
    _REMOTE_BUILTINS[name] = found
    return found


def _make_remote_class(builtin: type[Exception]) -> type[RemoteError] | None:
    made = _REMOTE_CLASSES.get(builtin)
    if made is not None:
        return made
    # __qualname__ is what tracebacks print and what pickle looks up (the
    # module's __getattr__ resolves it); __name__ stays "RemoteError", so what
    # counts errors by class name (the pool's per-outcome metrics, the stress
    # report) keeps counting every handler failure under one name.
    qualname = f"RemoteError[{builtin.__name__}]"
    try:
        made = type("RemoteError", (RemoteError, builtin), {
            "__module__": __name__, "__qualname__": qualname,
            "__doc__": f"A handler's {builtin.__name__}, raised in the caller (see RemoteError).",
        })
        made(type=builtin.__name__, message="probe")  # some built-ins need other arguments
    except TypeError:
        return None
    _REMOTE_CLASSES[builtin] = made
    return made


class ArgumentError(EngineError):
    """What the caller passed cannot be sent: nothing was written, the worker is untouched.

    Raised before the first byte of the request, so the worker, its sessions
    and the lease are unaffected. Catch it as :class:`ArgumentTypeError` (also
    a ``TypeError``) or :class:`ArgumentValueError` (also a ``ValueError``;
    :class:`RequestTooLarge` is one). ``path`` names the offending part:
    ``args["x"][2]``, ``command``, ``session``.
    """

    def __init__(self, problem: str, *, command: str | None = None, path: str = "args") -> None:
        self.problem = problem
        self.command = command
        self.path = path
        call = repr(command) if command else "the call"
        super().__init__(
            f"cannot send {call}: {problem}; nothing was sent and the worker is untouched"
        )


class ArgumentTypeError(ArgumentError, TypeError):
    """A value or a dict key JSON cannot carry (a set, bytes, an object, ``{1: ...}``),
    or a command or session that is not a string."""


class ArgumentValueError(ArgumentError, ValueError):
    """A value of a JSON type that JSON still cannot carry: NaN or Infinity, a
    structure that contains itself, text with a lone surrogate."""


class RequestTooLarge(ArgumentValueError):
    """The request frame would exceed ``max_frame_size`` (``max_pickle_frame_size``
    for a pickle frame: ``setting`` names the one)."""

    def __init__(self, *, command: str | None, size: int, max_frame_size: int,
                 setting: str = "max_frame_size") -> None:
        self.size = size
        self.max_frame_size = max_frame_size
        super().__init__(
            f"the request frame would have {size} bytes, more than {setting}="
            f"{max_frame_size}; send less data per call or raise {setting}",
            command=command,
        )


class PickleNotAllowed(EngineError):
    """``run_sync`` got a worker that takes JSON frames only: pickle is off for
    it (a worker started through a remote Launcher, unless ``allow_pickle=True``:
    unpickling runs code, so the parent must trust the worker). Nothing was sent."""

    def __init__(self, *, worker_id: str | None = None, pool: str | None = None) -> None:
        self.worker_id = worker_id
        self.pool = pool
        super().__init__(
            f"worker {worker_id} of pool {pool} takes JSON commands only, so run_sync cannot "
            "use it; pickle is off by default for workers started through a remote "
            "Launcher: set allow_pickle=True in the pool's config if you trust that host")


class ContractViolation(EngineError):
    """A checkout policy callback returned something outside its contract or raised."""

    def __init__(self, *, callback: str, value: Any, expected: str) -> None:
        self.callback = callback
        self.value = value
        self.expected = expected
        super().__init__(
            f"policy callback {callback} returned {value!r}; expected {expected}. "
            "The worker is treated as Remove; fix the policy"
        )


class BridgeUnavailable(EngineError):
    """No live pool or bridge could be found through discovery."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(f"Python bridge not available: {why}")


class ResponseShapeError(EngineError):
    """A worker's answer does not have the shape the caller expects."""

    def __init__(self, *, what: str, problem: str, value: Any = None) -> None:
        self.what = what
        self.problem = problem
        self.value = value
        super().__init__(f"unexpected shape for {what}: {problem}")


class RetriesExhausted(EngineError):
    """A retried call failed on every attempt; ``__cause__`` is the last failure."""

    def __init__(self, *, attempts: int, last: BaseException, command: str | None = None) -> None:
        self.attempts = attempts
        self.last = last
        self.command = command
        super().__init__(
            f"{command!r} failed after {attempts} attempts; last error: "
            f"{type(last).__name__}: {last}"
        )
