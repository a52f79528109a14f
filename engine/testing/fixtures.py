"""Pools for tests: ``start_test_pool`` and ``wait_for_pool_ready``.

``start_test_pool`` opens an *eager* pool (every worker starts at once) under a
unique name, registered for discovery, small by default, waits until its
workers are really ready and closes it (waiting for every process) when the
block ends::

    async with start_test_pool(size=2) as pool:
        assert await pool.call("ping")

``wait_for_pool_ready`` waits on the pool's own change notifications
(``pool.wait_until``: re-checked whenever a worker becomes live or dies) and
checks *real* readiness in the pool's snapshot (``pool.inspect()``) each time:
the slot is READY or BUSY, its worker has sent its hello and is alive right
now. A counter alone could count a worker whose process has just died.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine.errors import PoolClosed, PoolTimeout
from engine.pool.config import PoolConfig
from engine.pool.introspection import PoolView
from engine.pool.lifecycle import WorkerState
from engine.pool.pool import Pool, open_pool

__all__ = ["ready_workers", "start_test_pool", "wait_for_pool_ready"]

_names = itertools.count(1)

_DEFAULT_SIZE = 2


def ready_workers(pool: Pool) -> list[str]:
    """Ids of the workers that can serve now: READY/BUSY, hello received, alive."""
    return _ready_in(pool.inspect())


def _ready_in(view: PoolView) -> list[str]:
    return [slot.worker.worker_id for slot in view.slots
            if slot.state in (WorkerState.READY, WorkerState.BUSY)
            and slot.worker is not None and slot.worker.is_alive()]


async def wait_for_pool_ready(pool: Pool, n: int | None = None,
                              timeout: float | None = None) -> list[str]:
    """Wait until at least ``n`` workers (default: all) are really ready.

    Returns their ids. Raises ``PoolTimeout`` after ``timeout`` seconds (default:
    twice the pool's ``start_timeout``) naming the last start failure, and
    ``PoolClosed`` if the pool closes meanwhile. A start that fails is waited
    past (the next may succeed); :func:`start_test_pool` fails at once instead
    when no worker can start.
    """
    want = pool.config.size if n is None else n
    if not 0 <= want <= pool.config.size:
        raise ValueError(f"n={want} must be between 0 and the pool size {pool.config.size}")
    limit = pool.config.start_timeout * 2 if timeout is None else timeout
    with trio.move_on_after(limit):
        view = await pool.wait_until(lambda v: v.closing or len(_ready_in(v)) >= want)
        if view.closing:
            raise PoolClosed(pool=pool.label)
        return _ready_in(view)
    view = pool.inspect()
    last = view.last_start_error
    busy = sum(1 for slot in view.slots if slot.state is WorkerState.BUSY)
    raise PoolTimeout(timeout=limit, pool=pool.label,
                      reason=f"{len(_ready_in(view))} of {want} workers ready", busy=busy,
                      last_start_failure=None if last is None else last.reason)


@asynccontextmanager
async def start_test_pool(config: PoolConfig | None = None, *, ready: int | None = None,
                          ready_timeout: float | None = None,
                          **overrides: Any) -> AsyncIterator[Pool]:
    """Open an eager, uniquely named, small pool; wait for ``ready`` workers (default all).

    Any ``PoolConfig`` field may be passed. ``size`` defaults to 2 and ``name``
    to a fresh ``test-pool-<pid>-<n>`` (registered for discovery). ``lazy=True``
    is refused: a test pool is eager so that readiness means something. An app
    none of whose workers can start raises ``AppStartFailed`` at once.
    """
    if overrides.get("lazy"):
        raise ValueError("start_test_pool starts eager pools; use open_pool(lazy=True)")
    overrides["lazy"] = False
    if config is None or "size" in overrides:
        overrides.setdefault("size", _DEFAULT_SIZE)
    if config is None or config.name is None:
        overrides.setdefault("name", f"test-pool-{os.getpid()}-{next(_names)}")
    async with open_pool(config, **overrides) as pool:
        # An app that cannot start: its AppStartFailed at once (as
        # pool.wait_ready gives it), not a time-out after twice start_timeout.
        await pool.wait_ready(ready, timeout=ready_timeout)
        await wait_for_pool_ready(pool, ready, ready_timeout)
        yield pool
