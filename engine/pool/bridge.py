"""A single supervised worker with the pool's ``call`` API (design sections 4, 10).

A bridge is a pool of one that registers for discovery as kind ``"bridge"``:
restart on crash with backoff, session state on that one worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from engine.pool.config import PoolConfig
from engine.pool.pool import Pool, PoolStatistics, open_pool
from engine.pool.resilience import Retry


class Bridge:
    """One supervised worker. Create it with :func:`open_bridge`."""

    kind = "bridge"

    def __init__(self, pool: Pool, name: str | None) -> None:
        self._pool = pool
        self.name = name

    @property
    def closed(self) -> bool:
        return self._pool.closed

    @property
    def pool(self) -> Pool:
        return self._pool

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None, retry: Retry | None = None) -> Any:
        return await self._pool.call(command, args, session=session, timeout=timeout,
                                     retry=retry)

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self._pool.wait_ready(1, timeout=timeout)

    async def end_session(self, session: str) -> bool:
        return await self._pool.end_session(session)

    def statistics(self) -> PoolStatistics:
        return self._pool.statistics()

    async def aclose(self) -> None:
        await self._pool.aclose()


@asynccontextmanager
async def open_bridge(config: PoolConfig | None = None, **overrides: Any) \
        -> AsyncIterator[Bridge]:
    """Start one supervised worker. Same keywords as ``open_pool`` (``size`` is 1)."""
    if overrides.get("size", 1) != 1 or (config is not None and config.size != 1
                                         and "size" not in overrides):
        raise ValueError("open_bridge runs exactly one worker: size must be 1")
    overrides["size"] = 1
    name = overrides.pop("name", None)
    if name is None and config is not None:
        name = config.name
    overrides["name"] = None
    async with open_pool(config, **overrides) as pool:
        bridge = Bridge(pool, name)
        registration: Any = nullcontext()
        if name is not None:
            from engine.discovery import register

            registration = register(name, bridge)
        with registration:
            yield bridge
