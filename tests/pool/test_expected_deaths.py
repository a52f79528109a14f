"""Deaths a caller causes on purpose (``Pool.expect_death``: chaos runners,
campaigns, tests) are counted, not logged one WARNING per death; a crash
nobody announced is still logged."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from engine import open_pool
from engine.testing.fakes import FakeWorkerFactory
from engine.testing.fixtures import ready_workers, wait_for_pool_ready

KILLS = 5


def crash_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "crashed" in r.getMessage()]


@pytest.mark.layer2
async def test_expected_kills_are_counted_not_logged_and_others_still_are(
        caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.pool")
    factory = FakeWorkerFactory()
    with trio.fail_after(60):
        async with open_pool(worker_factory=factory, size=2) as pool:
            for _ in range(KILLS):
                victim = (await wait_for_pool_ready(pool))[0]
                pool.expect_death(victim)
                factory.worker(victim).kill()
                await pool.wait_until(lambda view, v=victim: all(
                    slot.worker_id != v for slot in view.slots))
            await wait_for_pool_ready(pool)
            assert crash_lines(caplog) == []  # not one line per planned kill
            counters = pool.metrics().counters
            assert counters["expected_deaths"] == KILLS
            assert counters["worker_crashes"] == KILLS  # still crashes for supervision
            # A crash nobody announced is logged as before.
            stranger = ready_workers(pool)[0]
            factory.worker(stranger).kill()
            await pool.wait_until(lambda view: all(
                slot.worker_id != stranger for slot in view.slots))
            assert len(crash_lines(caplog)) == 1 and stranger in crash_lines(caplog)[0]
            assert pool.metrics().counters["expected_deaths"] == KILLS
    planned = [r for r in caplog.records if r.levelno == logging.DEBUG
               and "(expected)" in r.getMessage()]
    assert len(planned) == KILLS
