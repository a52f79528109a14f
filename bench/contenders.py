"""The contenders: ``pool.call`` (with and without busy-polling) and the peers.

Each opens as an async context manager yielding a :class:`Contender`: a call
that runs ``dict(PAYLOAD)`` (peers) or the ``echo`` command (the pool) and
returns the payload, and the pids of the processes doing the work, for their
CPU. The pool names its workers; a peer's are found as the processes that
appeared below this one while it was set up and warmed (anyio and trio-parallel
spawn lazily, on the first calls; a ``ProcessPoolExecutor`` adds its forkserver,
which idles). Contenders are therefore opened one at a time.

Peers are limited to ``workers`` processes, as the pool is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import trio

import engine
from bench.common import PAYLOAD, Call, warm
from bench.cpu import descendants


@dataclass(frozen=True)
class Contender:
    """``pids``: the processes doing the work; ``probe``, if given, reads their
    CPU instead (see :class:`bench.cpu.CpuMeter`)."""

    name: str
    call: Call
    pids: Pids
    probe: Callable[[], float] | None = None


Pids = Callable[[], Iterable[int]]
# workers -> a context yielding the call and the workers' pids (None: find them).
Opener = Callable[[int], AbstractAsyncContextManager[tuple[Call, Pids | None]]]


@asynccontextmanager
async def _pool(workers: int, **config: Any) -> AsyncIterator[tuple[Call, Any]]:
    async with engine.open_pool(size=workers, call_timeout=None, max_waiters=10_000,
                                **config) as pool:
        await pool.wait_ready(workers, timeout=60)

        async def call() -> Any:
            return await pool.call("echo", PAYLOAD)

        yield call, pool.worker_pids


def _pool_no_poll(workers: int) -> AbstractAsyncContextManager[tuple[Call, Any]]:
    return _pool(workers, busy_poll=0)


@asynccontextmanager
async def _anyio(workers: int) -> AsyncIterator[tuple[Call, None]]:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(workers)

    async def call() -> Any:
        return await anyio.to_process.run_sync(dict, PAYLOAD, limiter=limiter)

    yield call, None


@asynccontextmanager
async def _trio_parallel(workers: int) -> AsyncIterator[tuple[Call, None]]:
    import trio_parallel  # type: ignore[import-untyped]

    limiter = trio.CapacityLimiter(workers)
    async with trio_parallel.open_worker_context() as ctx:
        async def call() -> Any:
            return await ctx.run_sync(dict, PAYLOAD, limiter=limiter)

        yield call, None


@asynccontextmanager
async def _process_pool_executor(workers: int) -> AsyncIterator[tuple[Call, None]]:
    # forkserver: forking a process that already runs Trio's threads is unsafe.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as ppe:
        async def call() -> Any:
            future = ppe.submit(dict, PAYLOAD)
            return await trio.to_thread.run_sync(future.result)

        yield call, None


OPENERS: dict[str, Opener] = {
    "pool": _pool,
    "pool_no_poll": _pool_no_poll,
    "anyio": _anyio,
    "trio_parallel": _trio_parallel,
    "process_pool_executor": _process_pool_executor,
}

LABELS = {
    "pool": "pool.call",
    "pool_no_poll": "  the same with busy_poll=0 (no polling)",
    "anyio": "anyio.to_process.run_sync (Trio backend)",
    "trio_parallel": "trio_parallel.run_sync",
    "process_pool_executor": "ProcessPoolExecutor via trio.to_thread",
}


@asynccontextmanager
async def open_contender(name: str, workers: int,
                         concurrency: int = 1) -> AsyncIterator[Contender]:
    """Open contender ``name`` with ``workers`` processes, check its answer and
    warm it with ``concurrency`` callers (which starts every worker it uses)."""
    before = descendants()
    async with OPENERS[name](workers) as (call, pids):
        if await call() != PAYLOAD:
            raise RuntimeError(f"{name} did not echo the payload")
        await warm(call, concurrency)
        if pids is None:
            found = sorted(descendants() - before)
            pids = lambda: found  # noqa: E731
        yield Contender(name, call, pids)
