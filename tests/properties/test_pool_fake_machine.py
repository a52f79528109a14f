"""The pool state machine over fake workers under virtual time (layer 2).

Fake workers speak the real framing over memory streams, so this runs the real
pool, supervisor, channel and protocol code; only the processes are scripted.
See engine.testing.machine for the rules and invariants.
"""

from __future__ import annotations

import pytest

from engine.testing.fakes import FakeWorkerFactory
from engine.testing.faults import inject_fault
from engine.testing.fixtures import start_test_pool
from engine.testing.machine import pool_machine
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer2

FakePoolMachine = pool_machine(workers="fake")
FakePoolMachine.TestCase.settings = scaled(max_examples=300, stateful_step_count=50)
TestFakePoolMachine = FakePoolMachine.TestCase


async def test_worker_killed_after_grant_is_not_handed_over() -> None:
    """Found by the machine (kill_after_next_grant + checkout): a worker that dies
    after the grant, before the waiter takes it, must not be handed over."""
    async with start_test_pool(worker_factory=FakeWorkerFactory(), size=1) as pool:
        with inject_fault("kill_after_grant", pool=pool, times=1) as fault:
            async with pool.checkout(timeout=5) as lease:
                worker = pool.inspect().slots[lease.slot].worker
                assert fault.fired == 1
                assert worker is not None and worker.worker_id == lease.worker_id
                assert worker.is_alive(), "handed a worker that died after the grant"
