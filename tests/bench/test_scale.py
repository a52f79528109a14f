"""The scale rows' steady state (layer 2: fake workers)."""

from __future__ import annotations

import pytest

from bench.scale import steady_calls

pytestmark = pytest.mark.layer2


@pytest.mark.parametrize(("workers", "callers"), [(1, 1), (1, 40), (3, 40)])
async def test_steady_calls_keeps_the_queue_full_while_measuring(workers: int,
                                                                 callers: int) -> None:
    result = await steady_calls(workers, callers, 60)
    assert result["calls"] == 60
    # What the rows claim: the queue holds (about) callers - workers waiters
    # for the whole window; the caller that just finished is about to queue.
    expected = max(0, callers - workers - 1)
    for key in ("waiting_at_open", "waiting_at_close"):
        assert expected <= result[key] <= max(0, callers - workers), (key, result)
    assert result["cpu"] > 0 and result["wall"] > 0
