"""Two breakdown rows measured in the bench process: no pipe, no worker process.

* :func:`open_instant_pool`: a pool of one *instant* worker, a ``worker_factory``
  handle whose ``call`` returns its arguments at once (no I/O, no checkpoint).
  ``pool.call`` on it is the pool's own cost per call (the core's bookkeeping
  and the Trio shell: checkout, lease, timers, metrics, checkin) and nothing
  else; with the raw worker row it splits ``pool.call`` into its two parts.
* :func:`json_cost`: the JSON work of one call at both ends, in-process: the
  parent encodes the request and decodes the reply, the worker decodes the
  request and encodes the reply (the engine's codec, the bench's payload).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import engine
from engine.pool.pool import Pool
from engine.process.handle import ExitInfo, SpawnRequest
from engine.protocol import PROTOCOL_VERSION, Hello, decode_body, encode_frame, encode_request

_PID = 1  # never signalled: the instant worker has no process


class InstantWorker:
    """A worker handle that answers every call with its arguments, at once."""

    def __init__(self, request: SpawnRequest) -> None:
        self.worker_id = request.worker_id
        self.pid: int | None = _PID
        self.hello = Hello(PROTOCOL_VERSION, request.worker_id, _PID, "instant", ["echo"])
        self.dirty = False
        self.exit_info: ExitInfo | None = None
        self._exited = trio.Event()

    def is_alive(self) -> bool:
        return self.exit_info is None

    async def call(self, command: str, args: Any = None, *, session: str | None = None,
                   timeout: float | None = None) -> Any:
        return args

    def time_out(self, timeout: float) -> None:
        pass  # a call never stays in flight

    async def wait_exited(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def kill(self) -> None:
        if self.exit_info is None:
            self.exit_info = ExitInfo(exit_code=None, signal=int(signal.SIGKILL), reason="killed")
            self._exited.set()

    def stderr_tail(self) -> tuple[str, ...]:
        return ()


@asynccontextmanager
async def _instant(request: SpawnRequest) -> AsyncIterator[InstantWorker]:
    worker = InstantWorker(request)
    try:
        await trio.lowlevel.checkpoint()
        yield worker
    finally:
        worker.kill()


@asynccontextmanager
async def open_instant_pool() -> AsyncIterator[Pool]:
    """``open_pool(size=1)`` over an instant worker, ready."""
    async with engine.open_pool(size=1, worker_factory=_instant, call_timeout=None) as pool:
        await pool.wait_ready(1, timeout=30)
        yield pool


def json_cost(payload: Any, calls: int = 20_000, repeats: int = 5) -> float:
    """CPU seconds of JSON work per call at both ends (best of ``repeats``)."""
    reply = encode_frame({"id": 1, "ok": True, "result": payload})[4:]

    def one() -> None:
        request = encode_request(1, "echo", payload, None)
        message = decode_body(request[4:])  # the worker reads it...
        encode_frame({"id": message["id"], "ok": True, "result": message["args"]})  # ...answers
        decode_body(reply)  # and the parent reads the answer

    # CPU time, not wall time: the work is CPU-bound, and on a shared machine
    # wall time would count the turns other processes take on the core.
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(calls):
            one()
        best = min(best, (time.thread_time() - started) / calls)
    return best
