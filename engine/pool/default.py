"""``engine.run_sync``: trio-parallel's call, on a default pool owned by the current Trio run.

The first ``run_sync`` of a run starts the pool in a Trio *system task*
(``trio.lowlevel.spawn_system_task``): it belongs to the run, not to the task
that happened to call first, so a caller cancelled while it starts does not
stop it. The run cancels its system tasks when the main task returns (or
raises); the task then leaves ``open_pool``, whose shielded shutdown stops
every worker and waits for each process before ``trio.run`` returns. A
``trio.lowlevel.RunVar`` keeps the pool, so each run gets its own.

The pool: ``os.cpu_count()`` workers of the ``engine.workers.bare`` app, no
call timeout (a function runs as long as it runs, as with trio-parallel),
checkouts that wait as long as it takes (callers queue in the pool, first
come first served, or behind the CapacityLimiter they pass), changed with
:func:`configure_default_pool`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from engine.errors import EngineError
from engine.pool.config import PoolConfig, make_config
from engine.pool.pool import Pool, open_pool, refuse_while_adopting, require_trio_run

T = TypeVar("T")

_overrides: dict[str, Any] = {}
# Callers beyond the workers queue in the pool (FIFO) for as long as it takes.
_BASE = PoolConfig(app="engine.workers.bare", size=os.cpu_count() or 1, call_timeout=None,
                   checkout_timeout=None, max_waiters=1 << 30)


class _DefaultPool:
    """One run's default pool, set once started (or the error it failed with)."""

    __slots__ = ("error", "pool", "ready")

    def __init__(self) -> None:
        self.pool: Pool | None = None
        self.error: BaseException | None = None
        self.ready = trio.Event()


_STATE: trio.lowlevel.RunVar[_DefaultPool | None] = trio.lowlevel.RunVar(
    "engine_default_pool", default=None)


def default_config() -> PoolConfig:
    """The default pool's config: the built-in defaults plus
    :func:`configure_default_pool`'s overrides."""
    return make_config(_BASE, _overrides)


def configure_default_pool(**overrides: Any) -> None:
    """Set the config of default pools started from now on (``open_pool``'s
    keywords: ``size=8``, ``worker_output="discard"``, ...); replaces earlier
    overrides, and none restores the defaults. Raises ValueError for a bad
    field, RuntimeError when the current run has started its default pool
    already (configure before the run's first ``run_sync``)."""
    make_config(_BASE, overrides)  # raises ValueError naming a bad field
    try:
        started = _STATE.get() is not None
    except RuntimeError:  # outside a Trio run
        started = False
    if started:
        raise RuntimeError("this Trio run's default pool is running already; call "
                           "configure_default_pool() before the run's first run_sync()")
    _overrides.clear()
    _overrides.update(overrides)


async def run_sync(fn: Callable[..., T], *args: Any, kill_on_cancel: bool = False,
                   limiter: trio.CapacityLimiter | None = None) -> T:
    """Run ``fn(*args)`` in a worker process of this run's default pool and
    return its value: ``trio_parallel.run_sync``'s call.

    ``fn`` and ``args`` travel by pickle (``ArgumentTypeError``, a
    ``TypeError``, if they cannot, before anything starts); ``fn``'s exception
    is raised here as itself, with the worker's traceback as its cause.
    ``kill_on_cancel=False``: once ``fn`` runs, cancellation waits for it;
    ``True``: cancellation kills its worker at once (the pool starts
    another). ``limiter`` bounds concurrent calls (default: one per worker,
    the callers beyond that waiting in the pool's queue, first come first served).
    Called in a cancelled scope, it raises ``Cancelled`` having reserved and
    started nothing. See :meth:`engine.Pool.run_sync`.
    """
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except RuntimeError:  # not in a Trio run: say so (free on the hot path)
        require_trio_run("engine.run_sync")
        raise
    state = _STATE.get()
    if state is None or state.pool is None:
        state = await _started()
    assert state.pool is not None
    if limiter is None:
        # One call per worker at once, as trio-parallel's default limiter
        # allows: the pool's own queue (FIFO) does that, without a second
        # queue in front of it.
        return await state.pool.run_sync(fn, *args, kill_on_cancel=kill_on_cancel)
    # A free token is taken without a trip through the scheduler (the call
    # yields anyway, waiting for the worker); only a wait for one sleeps.
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await limiter.acquire()
    except AttributeError:
        if hasattr(limiter, "acquire_nowait"):
            raise  # the limiter's own error
        raise TypeError(f"limiter must be a trio.CapacityLimiter (say "
                        f"trio.CapacityLimiter(4)), got {limiter!r}") from None
    try:
        return await state.pool.run_sync(fn, *args, kill_on_cancel=kill_on_cancel)
    finally:
        limiter.release()


async def current_default_pool() -> Pool:
    """This run's default pool (started if it was not): for its statistics,
    ``worker_pids()``, or a ``run_sync`` with a session or a timeout."""
    require_trio_run("engine.current_default_pool")
    state = await _started()
    assert state.pool is not None
    return state.pool


async def _started() -> _DefaultPool:
    state = _STATE.get()
    if state is None:
        refuse_while_adopting()  # before the pool's system task: its error is the caller's
        state = _DefaultPool()
        _STATE.set(state)
        config = default_config()
        trio.lowlevel.spawn_system_task(_hold, state, config,
                                        name="engine default pool")
    if not state.ready.is_set():
        await state.ready.wait()
    if state.error is not None:
        raise EngineError(f"the default pool could not start: {state.error}") \
            from state.error
    return state


async def _hold(state: _DefaultPool, config: PoolConfig) -> None:
    """The system task that owns the pool until the run ends (its cancellation)."""
    try:
        async with open_pool(config) as pool:
            state.pool = pool
            state.ready.set()
            await trio.sleep_forever()
    except Exception as exc:  # a system task must not raise: callers get it instead
        state.error = exc
        state.ready.set()


__all__ = ["configure_default_pool", "current_default_pool", "default_config", "run_sync"]
