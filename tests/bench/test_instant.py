"""The instant worker behind the bench's "pool's own cost" row (layer 2: no process)."""

from __future__ import annotations

import pytest
import trio

from bench.instant import json_cost, open_instant_pool

pytestmark = pytest.mark.layer2

HANG_GUARD = 20.0


async def test_an_instant_pool_answers_with_the_arguments_and_closes() -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_instant_pool() as pool:
            assert await pool.call("echo", {"n": 1}) == {"n": 1}
            async with pool.checkout() as lease:
                assert await lease.call("anything", [1, 2]) == [1, 2]
            stats = pool.statistics()
            assert (stats.restarts, stats.crashes) == (0, 0)
            pool.check_invariants()
        assert pool.closed


def test_json_cost_is_a_positive_time_per_call() -> None:
    assert 0 < json_cost({"n": 1}, calls=50, repeats=2) < 1.0
