"""A lease: one checked-out worker, from receipt to check-in.

:class:`Lease` is what ``pool.checkout()`` yields (and what ``pool.call`` uses
inside). Its calls' deadlines go on the pool's timer (no cancel scope per
call); :func:`release` checks it back in (the policy's ``on_checkin``, then the
core), and :func:`revoke` ends it at shutdown. A lease sees its pool only
through a :class:`LeaseContext`.

``LeaseReleased`` lives here rather than in :mod:`engine.errors` because it
must subclass ``trio.ClosedResourceError``, and ``engine.errors`` must stay
importable without Trio (the worker-side runtime imports it through
:mod:`engine.protocol`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from engine import telemetry
from engine.errors import (
    CallTimeout,
    EngineError,
    PoolClosed,
    ProtocolError,
    SessionLost,
    WorkerCrashed,
)
from engine.pool.config import check_seconds
from engine.pool.core import PoolCore
from engine.pool.deadlines import Deadlines
from engine.pool.timer import Expirable
from engine.process.handle import WorkerHandle


class LeaseReleased(EngineError, trio.ClosedResourceError):
    """A lease was used after it was checked back in (or its worker was replaced)."""

    def __init__(self, *, worker_id: str | None = None) -> None:
        self.worker_id = worker_id
        super().__init__(
            f"lease on worker {worker_id} was already released; check out a new lease "
            "with pool.checkout()"
        )


#: ``(slot, worker, clean, error, calls, draining)`` -> a Remove reason, or None
#: to keep the worker: the policy's ``on_checkin``, validated (None: the default
#: policy, whose rule the core applies itself).
CheckinVetting = Callable[[int, WorkerHandle, bool, "BaseException | None", int, bool],
                          "str | None"]


class HeldLeases:
    """The leases callers hold, by token; shutdown waits for them to drain."""

    __slots__ = ("_drained", "by_token")

    def __init__(self) -> None:
        self.by_token: dict[int, Lease] = {}
        self._drained: trio.Event | None = None

    def __len__(self) -> int:
        return len(self.by_token)

    async def wait_drained(self) -> None:
        """Return once no lease is held."""
        if self.by_token:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()
        else:
            await trio.lowlevel.checkpoint()



@attrs.frozen
class LeaseContext:
    """What a lease needs of its pool, and nothing else."""

    label: str
    call_timeout: float | None
    #: > 0: a call abandoned in flight gives its worker back (draining).
    cancel_grace: float
    clock: Callable[[], float]
    core: PoolCore
    flush: Callable[[], None]
    deadlines: Deadlines[Expirable]
    held: HeldLeases
    #: ``(command, duration, outcome, worker)``: latency, counters, telemetry.
    record_call: Callable[[str, float, str, WorkerHandle], None]
    vet_checkin: CheckinVetting | None


class Lease:
    """Exclusive use of one worker until the ``checkout`` block ends."""

    __slots__ = ("_calls", "_context", "_error", "_forced", "_in_call", "_released",
                 "_session", "_slot", "_timeout", "_token", "_worker")

    def __init__(self, context: LeaseContext, token: int, slot: int, worker: WorkerHandle,
                 session: str | None) -> None:
        self._context = context
        self._token = token  # the core's waiter id: a stale lease can't check in another's
        self._slot = slot
        self._worker = worker
        self._session = session
        self._released = False
        self._forced = False
        self._in_call = False
        self._calls = 0
        self._error: BaseException | None = None
        self._timeout = 0.0  # the call in flight's, for the CallTimeout the timer raises

    @property
    def worker_id(self) -> str:
        return self._worker.worker_id

    @property
    def pid(self) -> int | None:
        return self._worker.pid

    @property
    def session(self) -> str | None:
        return self._session

    @property
    def slot(self) -> int:
        return self._slot

    @property
    def codecs(self) -> tuple[str, ...]:
        """Codecs besides JSON the worker accepts (from its hello)."""
        codecs: tuple[str, ...] = getattr(self._worker.hello, "codecs", ())
        return codecs

    @property
    def calls(self) -> int:
        """Calls made on this lease so far."""
        return self._calls

    async def call(self, command: str, args: Any = None, *,
                   timeout: float | None = None) -> Any:
        """Send one command to this worker and return its result.

        Raises RemoteError (the handler failed; the worker is fine), WorkerCrashed
        or ProtocolError (the worker is replaced), CallTimeout (the worker is
        asked to abandon the request and, if it does within ``cancel_grace``,
        kept with its sessions; else replaced), PoolClosed when the pool shut
        down under this lease, LeaseReleased after the block ended. A call
        after one that was cancelled or timed out on the same lease first waits
        (up to ``cancel_grace``) for the worker to give that request back.
        """
        if self._released:
            if self._forced:
                raise PoolClosed(pool=self._context.label)
            raise LeaseReleased(worker_id=self._worker.worker_id)
        if self._in_call:
            # Refused before touching the deadline: it belongs to the call in
            # flight, which the pool's timer must keep watching.
            raise trio.BusyResourceError(
                f"lease on worker {self._worker.worker_id} already has a call in flight; "
                "a lease serves one call at a time")
        context = self._context
        if timeout is None:
            timeout = context.call_timeout
        else:
            check_seconds("timeout", timeout, "call_timeout")
        started = context.clock()
        entry = None
        if timeout is not None:
            # No cancel scope per call: the pool's timer ends an overdue call
            # through deadline_passed() -> worker.time_out() -> CallTimeout.
            self._timeout = timeout
            entry = context.deadlines.add(started + timeout, self)
        outcome = "ok"
        self._in_call = True
        try:
            return await self._worker.call(command, args, session=self._session)
        except BaseException as exc:
            outcome = type(exc).__name__
            if isinstance(exc, WorkerCrashed | CallTimeout | ProtocolError):
                self._error = exc
                if self._forced:
                    # Shutdown killed this worker after shutdown_grace.
                    raise PoolClosed(
                        f"pool {context.label} closed while {command!r} ran: its worker "
                        "was stopped once the pool's shutdown_grace had passed; let "
                        "calls finish before closing the pool, or raise shutdown_grace",
                        pool=context.label) from exc
                if self._session is not None and not _kept(context, self._worker, exc):
                    # This call may be the first to observe that the session's
                    # state is gone: then it reports the loss (see session_lost).
                    lost = session_lost(self, command, exc)
                    if lost is not None:
                        raise lost from exc
            raise
        finally:
            self._in_call = False
            if entry is not None:
                Deadlines.remove(entry)
            self._calls += 1
            context.record_call(command, context.clock() - started, outcome, self._worker)

    def deadline_passed(self) -> None:
        """Called by the pool's timer: the call in flight is overdue."""
        self._worker.time_out(self._timeout)


def _kept(context: LeaseContext, worker: WorkerHandle, failure: BaseException) -> bool:
    """Does the worker survive this failed call (with its sessions)? A timed-out
    call whose channel is clean (its reply came just after the deadline, or it
    was never sent) leaves it alive, as does one the worker can still give back
    (cooperative cancellation: see :func:`release`); a crash or a protocol
    error costs it."""
    if type(failure) is not CallTimeout or worker.exit_info is not None:
        return False
    return _clean_after_timeout(worker) or (
        context.cancel_grace > 0 and getattr(worker, "abandoned", False) is True)


def _clean_after_timeout(worker: WorkerHandle) -> bool:
    """A timed-out call left the worker clean: nothing of it is on the pipe (the
    reply was read after the deadline, or the request never went out). Such a
    worker is not killed, whatever ``cancel_grace`` says: a reply that arrived
    is no sign of a stuck worker."""
    return not worker.dirty and worker.exit_info is None


def session_lost(lease: Lease, command: str, failure: BaseException) -> SessionLost | None:
    """The SessionLost a session's call raises when its worker died under it,
    or None when the loss was already reported.

    The session is unbound here, in the same step, so that the loss is reported
    exactly once: the death, when the slot task notices it, finds no session to
    mark lost, and the next call of the session starts a fresh state. (Without
    this, the call saw WorkerCrashed and the next one SessionLost.) When the
    session is no longer bound to this lease's worker (an earlier call on the
    same lease reported the loss), the call's own error stands."""
    session = lease._session
    assert session is not None
    core = lease._context.core
    binding = core.bindings.get(session)
    waiter = core.waiters.get(lease._token)
    if binding is None or waiter is None or binding.slot != lease._slot \
            or binding.generation != waiter.generation:
        return None
    core.unbind(session)
    lease._context.flush()
    if isinstance(failure, CallTimeout):
        reason = f"was killed: {command!r} got no reply within {failure.timeout:g}s"
    elif isinstance(failure, ProtocolError):
        reason = f"broke the protocol during {command!r} and is replaced"
    else:
        reason = f"died during {command!r}"
    return SessionLost(session=session, worker_id=lease._worker.worker_id,
                       pid=lease._worker.pid, reason=reason)


def release(lease: Lease, error: BaseException | None, *, kill: bool = False) -> None:
    """Check the lease in (the end of its ``checkout`` block); idempotent.

    ``error``: what ended the block, if anything (the policy sees it).
    ``kill``: the worker is replaced at once, even if its abandoned request
    could be drained (``run_sync(kill_on_cancel=True)`` was cancelled)."""
    if lease._released:
        return
    lease._released = True
    context = lease._context
    held = context.held
    held.by_token.pop(lease._token, None)
    if not held.by_token and held._drained is not None:
        held._drained.set()
    worker = lease._worker
    # No poll here: a death is reported by the exit watcher (exit_info) or the
    # channel (dirty), and the next hand-off polls anyway.
    failure = lease._error
    if failure is not None and type(failure) is CallTimeout and (
            context.cancel_grace > 0 or _clean_after_timeout(worker)):
        failure = None  # cooperative cancellation (drained, not killed), or clean
    if kill and worker.dirty:
        failure = error  # a dirty worker stopped as unclean is killed (not drained)
    clean = failure is None and not worker.dirty and worker.exit_info is None
    # A call cancelled or timed out with its request in flight: the worker gives
    # it back in the background (engine.pool.draining) instead of dying.
    drain = not clean and failure is None and context.cancel_grace > 0 \
        and worker.exit_info is None and getattr(worker, "abandoned", False) is True
    remove = None
    if context.vet_checkin is not None:
        remove = context.vet_checkin(lease._slot, worker, clean, error, lease._calls, drain)
    context.core.checkin(lease._token, clean=clean, remove=remove, calls=lease._calls,
                         drain=drain)
    context.flush()
    if telemetry.active():
        telemetry.emit(telemetry.CHECKIN, {}, {"pool": context.label,
                                               "worker_id": worker.worker_id, "clean": clean})


_ASYNC_WITH = ("pool.checkout() is an async context manager: write `async with "
               "pool.checkout() as lease:` (the block checks the worker back in)")


class CheckoutBlock:
    """What ``pool.checkout()`` returns: ``async with`` it to hold a lease for
    the block. A class rather than ``@asynccontextmanager``: cheaper, and a
    mistaken ``await pool.checkout()`` or plain ``with`` says what to write
    instead of Python's remark on a generator context manager."""

    __slots__ = ("_acquire", "_lease", "_session", "_timeout")

    def __init__(self, acquire: Callable[[str | None, float | None], Awaitable[Lease]],
                 session: str | None, timeout: float | None) -> None:
        self._acquire = acquire
        self._session = session
        self._timeout = timeout
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise RuntimeError("this pool.checkout() block was entered already; call "
                               "pool.checkout() again for another lease")
        self._lease = lease = await self._acquire(self._session, self._timeout)
        return lease

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._lease is not None
        release(self._lease, exc)

    # Hidden from type checkers, which then flag the same mistakes statically.
    if not TYPE_CHECKING:
        def __await__(self) -> Generator[Any, None, NoReturn]:
            raise TypeError(_ASYNC_WITH)

        def __enter__(self) -> NoReturn:
            raise TypeError(_ASYNC_WITH)

        def __exit__(self, *exc_info: object) -> None:
            pass  # never entered: __enter__ raises


def revoke(lease: Lease) -> None:
    """Shutdown, after ``shutdown_grace``: kill the lease's worker. A call in
    flight wakes at once (as a crash would) and its caller gets PoolClosed."""
    lease._forced = True
    lease._worker.kill()
