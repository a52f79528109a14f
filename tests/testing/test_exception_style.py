"""One exception style: ``open_pool`` and ``start_test_pool`` let the block's
exception out as itself (the very object raised), never wrapped in the pool's
own nursery group. Groups are strict inside: a group the block raised (its own
nursery's) comes out as that group, not wrapped in another."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from engine import open_pool
from engine.errors import RemoteError
from engine.pool.pool import Pool
from engine.testing.fakes import FakeWorkerFactory
from engine.testing.fixtures import start_test_pool

Opener = Callable[..., AbstractAsyncContextManager[Pool]]
OPENERS = [pytest.param(open_pool, id="open_pool"),
           pytest.param(start_test_pool, id="start_test_pool")]


class BodyError(Exception):
    pass


@pytest.mark.layer2
@pytest.mark.parametrize("opener", OPENERS)
async def test_the_blocks_exception_comes_out_as_itself(
        opener: Opener, autojump_clock: trio.testing.MockClock) -> None:
    raised = BodyError("from the block")
    with trio.fail_after(30), pytest.raises(BodyError) as caught:
        async with opener(worker_factory=FakeWorkerFactory(), size=1) as pool:
            await pool.call("ping")
            raise raised
    assert caught.value is raised


@pytest.mark.layer2
@pytest.mark.parametrize("opener", OPENERS)
async def test_a_group_the_block_raised_is_not_wrapped_in_the_pools(
        opener: Opener, autojump_clock: trio.testing.MockClock) -> None:
    async def fails(n: int) -> None:
        raise BodyError(n)

    with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as caught:
        async with opener(worker_factory=FakeWorkerFactory(), size=1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fails, 1)
                nursery.start_soon(fails, 2)
    # exactly the block's own nursery group: its two leaves, no outer layer
    assert sorted(e.args[0] for e in caught.value.exceptions) == [1, 2]
    assert all(isinstance(e, BodyError) for e in caught.value.exceptions)


@pytest.mark.layer2
@pytest.mark.parametrize("opener", OPENERS)
async def test_a_group_of_one_from_the_block_stays_a_group(
        opener: Opener, autojump_clock: trio.testing.MockClock) -> None:
    group = ExceptionGroup("the block's own", [BodyError("only")])
    with trio.fail_after(30), pytest.raises(ExceptionGroup) as caught:
        async with opener(worker_factory=FakeWorkerFactory(), size=1):
            raise group
    assert caught.value is group  # strict groups: not collapsed to its leaf


@pytest.mark.layer2
@pytest.mark.parametrize("opener", OPENERS)
async def test_a_remote_error_from_the_block_keeps_its_remote_traceback(
        opener: Opener, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30), pytest.raises(RemoteError) as caught:
        async with opener(worker_factory=FakeWorkerFactory(), size=1) as pool:
            await pool.call("fail", {"message": "boom"})
    assert "boom" in str(caught.value)
    # the cause survives the unwrapping whenever the worker sent a traceback
    assert (caught.value.__cause__ is not None) == bool(caught.value.traceback)


@pytest.mark.layer2
@pytest.mark.parametrize("opener", OPENERS)
async def test_a_cancelled_block_is_just_cancelled(
        opener: Opener, autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(5) as scope:
        async with opener(worker_factory=FakeWorkerFactory(), size=1):
            await trio.sleep_forever()
    assert scope.cancelled_caught


@pytest.mark.layer3
@pytest.mark.parametrize("opener", OPENERS)
async def test_real_workers_the_same_style(opener: Opener) -> None:
    raised = BodyError("from the block")
    kwargs: dict[str, Any] = {"size": 1}
    with trio.fail_after(60), pytest.raises(BodyError) as caught:
        async with opener(**kwargs) as pool:
            await pool.call("ping")
            raise raised
    assert caught.value is raised
