"""run_sync on fake workers (layer 2): the fakes speak pickle frames too.

A fake whose spawn request allows pickle (the default for local workers)
announces the codec, runs the pickled function in this process with the real
worker's handler, and answers with the same frames; so the pool's run_sync
path (pickling before reserving, the codec check, unpickling, re-raising the
function's own exception, sessions, fault modes) is tested without a process.
"""

from __future__ import annotations

import operator
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.errors import ArgumentTypeError, PickleNotAllowed, ProtocolError, WorkerCrashed
from engine.pool.pickled import pickle_call
from engine.protocol import PICKLE_CODEC, PICKLE_COMMAND, Pickled
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.workers import current_session

pytestmark = pytest.mark.layer2

GUARD = 10.0


def remember(value: Any) -> Any:
    current_session()["value"] = value
    return value


def recall() -> Any:
    return current_session().get("value")


def fail(message: str) -> None:
    raise KeyError(message)


async def test_run_sync_on_a_fake_returns_values_and_raises_the_functions_own_errors() -> None:
    factory = FakeWorkerFactory()
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=1) as pool:
            await pool.wait_ready()
            assert await pool.run_sync(operator.add, 1, 2) == 3
            value = {1: b"bytes", "set": {1, 2}, "tuple": (1, (2,))}
            assert await pool.run_sync(dict, value) == value  # not JSON: pickle round trip
            with pytest.raises(KeyError) as caught:
                await pool.run_sync(fail, "no such key")
            assert caught.value.args == ("no such key",)
            assert "fail" in str(caught.value.__cause__)  # the worker's traceback
            with pytest.raises(ArgumentTypeError):
                await pool.run_sync(lambda: 1)
            [worker] = factory.workers
            assert PICKLE_CODEC in worker.hello.codecs
            pickled = [r for r in worker.requests if r.command == PICKLE_COMMAND]
            assert len(pickled) == 3 and all(type(r.args) is Pickled for r in pickled)
            assert pool.statistics().restarts == 0


async def test_a_function_reaches_its_sessions_state_on_a_fake() -> None:
    factory = FakeWorkerFactory()
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=2) as pool:
            await pool.wait_ready(2)
            await pool.run_sync(remember, "a's", session="a")
            await pool.run_sync(remember, "b's", session="b")
            assert await pool.run_sync(recall, session="a") == "a's"
            assert await pool.run_sync(recall, session="b") == "b's"
            # The state lives in the fake's session dicts, as ctx.state's does.
            states = [w.sessions.get("a") for w in factory.workers]
            assert {"value": "a's"} in states


@pytest.mark.parametrize(("mode", "error"), [("crash", WorkerCrashed),
                                             ("garbage", ProtocolError),
                                             ("truncated", WorkerCrashed)])
async def test_fault_modes_apply_to_pickle_replies(mode: Any, error: type[Exception]) -> None:
    factory = FakeWorkerFactory(Script(faults={PICKLE_COMMAND: mode}))
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=1) as pool:
            await pool.wait_ready()
            with pytest.raises(error):
                await pool.run_sync(operator.add, 1, 2)
            assert await pool.call("echo", [1]) == [1]  # JSON commands still served


async def test_a_fake_without_pickle_refuses_run_sync_untouched() -> None:
    factory = FakeWorkerFactory()
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=1,
                                    allow_pickle=False) as pool:
            await pool.wait_ready()
            with pytest.raises(PickleNotAllowed):
                await pool.run_sync(operator.add, 1, 2)
            [worker] = factory.workers
            assert not worker.hello.codecs and not worker.requests


async def test_a_pickle_call_sent_without_run_sync_is_cancelled_like_any_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """Completing once sent is run_sync's promise, not the pickle codec's: a
    pickle request sent by ``pool.call`` is given up when its caller is
    cancelled, as a JSON call is (its reply never comes here: the fake hangs;
    were it shielded, the call would end with CallTimeout at call_timeout)."""
    factory = FakeWorkerFactory(Script(faults={PICKLE_COMMAND: "hang"}))
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=1, call_timeout=5.0) as pool:
            await pool.wait_ready()
            with trio.move_on_after(1.0) as scope:
                await pool.call(PICKLE_COMMAND, pickle_call(operator.add, (1, 2)))
            assert scope.cancelled_caught
            assert trio.current_time() < 5.0  # virtual: before any call_timeout
