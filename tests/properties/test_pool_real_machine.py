"""The same pool state machine with real subprocess workers and the real clock (layer 3).

Few examples and short runs: every example starts real worker processes. The
leak fixture of tests/conftest.py then checks that no process or fd is left.
"""

from __future__ import annotations

import pytest

from engine.testing.machine import pool_machine
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer3

RealPoolMachine = pool_machine(workers="real")
RealPoolMachine.TestCase.settings = scaled(max_examples=10, stateful_step_count=15)
TestRealPoolMachine = RealPoolMachine.TestCase
