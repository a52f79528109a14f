"""What the pool needs of a worker, whatever runs it (a subprocess or a test fake).

Parent side: imports Trio. The child-side runtime never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs

from engine.busy_poll import DEFAULT_BUSY_POLL
from engine.process.launch import Launcher, LauncherChoice
from engine.protocol import DEFAULT_MAX_PICKLE_FRAME_SIZE, Hello


@attrs.frozen
class ExitInfo:
    """How a worker ended. ``signal`` is set when a signal killed it."""

    exit_code: int | None
    signal: int | None
    reason: str

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with code {self.exit_code}"

    @staticmethod
    def from_returncode(returncode: int | None, reason: str) -> ExitInfo:
        if returncode is not None and returncode < 0:
            return ExitInfo(exit_code=None, signal=-returncode, reason=reason)
        return ExitInfo(exit_code=returncode, signal=None, reason=reason)


class DrainFailed(Exception):
    """An abandoned request was not given back cleanly (``cancel_grace`` ended
    first, the worker died, or it answered out of step): kill the worker.

    ``worker_gone``: the pipe closed under the drain, so the worker is dying on
    its own; its exit status, not this error, says why."""

    def __init__(self, message: str, *, worker_gone: bool = False) -> None:
        super().__init__(message)
        self.worker_gone = worker_gone


@attrs.frozen
class SpawnRequest:
    """Everything needed to start one worker.

    ``launcher``: a local argv prefix (possibly empty: the worker is a child of
    this process) or a :class:`~engine.process.launch.Launcher` that runs it on
    another host (then ``python`` and ``inherit_sys_path`` do not apply, and
    ``env`` is set at the far end).
    """

    worker_id: str
    app: str
    start_timeout: float
    launcher: LauncherChoice = ()
    python: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    max_frame_size: int = 16 * 1024 * 1024
    stderr_tail_lines: int = 20
    busy_poll: float = DEFAULT_BUSY_POLL
    # The worker imports its app with the parent's sys.path (captured at each
    # spawn) when it runs the parent's own interpreter (``python`` unset). A
    # launcher that runs workers elsewhere (another machine, a container)
    # turns this off, or remaps the paths first.
    inherit_sys_path: bool = True
    # Where the worker's stderr (and stdout) lines go besides the crash tail:
    # "forward" (the parent's stderr, prefixed), "log" (logging) or "discard".
    worker_output: str = "forward"
    #: How long an abandoned request may take to come back (design section 8).
    cancel_grace: float = 1.0
    #: Pickle frames (run_sync) in either direction: None lets local workers
    #: take them and keeps workers started through a remote Launcher on JSON
    #: (unpickling runs code: the parent trusts only what it runs itself,
    #: unless the user says so); True or False decides for every worker.
    allow_pickle: bool | None = None
    max_pickle_frame_size: int = DEFAULT_MAX_PICKLE_FRAME_SIZE

    @property
    def pickle_frame_size(self) -> int:
        """The largest pickle frame the worker and the parent accept; 0: none
        (the worker serves JSON commands only)."""
        allowed = self.remote is None if self.allow_pickle is None else self.allow_pickle
        return self.max_pickle_frame_size if allowed else 0

    @property
    def remote(self) -> Launcher | None:
        """The launcher when the worker runs on another host, else None.

        A remote worker's pid (from its hello) is not a process of this host:
        nothing may signal it or look it up here. Only the local launcher
        process the pool spawned may be signalled (``ProcessWorker.os_pid``)."""
        launcher = self.launcher
        return launcher if isinstance(launcher, Launcher) else None


class WorkerHandle(Protocol):
    """A started worker that has sent its hello.

    A ``worker_factory`` yields one of these; every member is required
    (``time_out`` included: the pool's deadlines depend on it).
    """

    @property
    def worker_id(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def hello(self) -> Hello: ...

    @property
    def dirty(self) -> bool:
        """True when the framing state can't be trusted (a call was interrupted)."""
        ...

    @property
    def exit_info(self) -> ExitInfo | None: ...

    def is_alive(self) -> bool:
        """Non-blocking liveness check: process running and pipes open."""
        ...

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None) -> Any: ...

    def time_out(self, timeout: float) -> None:
        """The owner's deadline for the call in flight passed: make that call
        raise CallTimeout (``timeout`` is the figure it reports) now, and leave
        the handle dirty; no call in flight: do nothing.

        Required of every handle, custom ``worker_factory`` ones included: the
        pool keeps every deadline on one timer and ends overdue calls (and
        health probes) only through this method, never with a cancel scope per
        call. The pool checks for it when it first receives a handle and
        raises TypeError naming it if it is missing."""
        ...

    async def wait_exited(self) -> ExitInfo: ...

    def kill(self) -> None:
        """Kill now (SIGKILL to the process group this pool spawned: for a
        remote worker, its local launcher's); does not wait."""
        ...

    def stderr_tail(self) -> tuple[str, ...]: ...


class DrainableHandle(WorkerHandle, Protocol):
    """A handle that can give back a worker whose call was abandoned in flight
    (cooperative cancellation, design section 8). Optional: with a handle
    that lacks it, such a worker is replaced, as with ``cancel_grace=0``."""

    @property
    def abandoned(self) -> bool:
        """A call was cancelled (or timed out) with its request in flight, and
        :meth:`drain_abandoned` may still give the worker back clean."""
        ...

    async def drain_abandoned(self) -> str:
        """Have the worker abandon that request and read its reply, within the
        handle's grace; returns how the request ended ("cancelled" or
        "answered"). Raises :class:`DrainFailed`: the worker must be killed."""
        ...


WorkerFactory = Callable[[SpawnRequest], AbstractAsyncContextManager[WorkerHandle]]
