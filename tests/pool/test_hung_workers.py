"""Hung workers are found with the default configuration (issue 17), layer 3.

A worker frozen while idle (here SIGSTOP: it neither answers nor dies, like a
deadlocked or C-stuck one) must be taken out of service and replaced within
``health_interval + health_timeout`` without a checkout ever being handed it.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

import engine
from engine import PoolConfig
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

HANG_GUARD = 30.0
READY = 10.0
# Scheduling slack on top of the two timers: a loaded 2-core machine runs the
# health loop and the probe's deadline late by milliseconds, not a second.
SLACK = 1.0
# The target for hung-worker detection, in seconds.
TARGET = 5.0


def test_the_default_config_bounds_hung_worker_detection_within_the_target() -> None:
    config = PoolConfig()
    assert config.health_interval is not None
    assert config.health_interval + config.health_timeout + SLACK <= TARGET


async def test_a_worker_frozen_while_idle_is_replaced_with_the_default_config() -> None:
    config = PoolConfig()
    assert config.health_interval is not None
    bound = config.health_interval + config.health_timeout + SLACK
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool() as pool:  # the defaults under test
            await pool.wait_ready(config.size, timeout=READY)
            mine = (await pool.call("ping"))["pid"]
            frozen = next(p for p in pool.worker_pids() if p != mine)
            os.kill(frozen, signal.SIGSTOP)
            stopped_at = trio.current_time()
            try:
                served = 0
                while frozen in pool.worker_pids():
                    # Every checkout meanwhile is served, by another worker: one
                    # handed the frozen worker would wait for call_timeout (30 s)
                    # and trip the hang guard.
                    with trio.fail_after(config.health_timeout):
                        assert (await pool.call("ping"))["pid"] != frozen
                    served += 1
                    assert trio.current_time() - stopped_at <= bound, \
                        f"the frozen worker was still in service after {bound:g} s"
                    await trio.sleep(0.05)  # pacing the caller, not synchronisation
                detected = trio.current_time() - stopped_at
            finally:
                if pid_alive(frozen):
                    os.kill(frozen, signal.SIGCONT)
            await pool.wait_ready(config.size, timeout=READY)
            assert served > 0
            assert detected <= bound
            assert frozen not in pool.worker_pids()
            assert len(pool.worker_pids()) == config.size
            assert not pid_alive(frozen)  # the pool killed and reaped it
            history = pool.inspect()
            reasons = [t.reason for s in history.slots for t in s.history]
            assert any("health_timeout" in r or "health check" in r for r in reasons), reasons
