"""The pool state machine over fake workers under virtual time (layer 2).

Fake workers speak the real framing over memory streams, so this runs the real
pool, supervisor, channel and protocol code; only the processes are scripted.
See engine.testing.machine for the rules and invariants.
"""

from __future__ import annotations

import pytest

from engine.testing.machine import pool_machine
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer2

FakePoolMachine = pool_machine(workers="fake")
FakePoolMachine.TestCase.settings = scaled(max_examples=100, stateful_step_count=30)
TestFakePoolMachine = FakePoolMachine.TestCase
