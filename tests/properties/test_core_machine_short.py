"""The core state machine on a short budget (issue 15): a few examples of the
whole machine (every rule: health probes, drains, retirement, close), cheap
enough for mutation testing of the core to run under instrumentation, where
the full machine (tests/properties/test_core_machine.py) exceeds the per-test
limit. It adds nothing to the CI suite's proof; the full machine runs there.
"""

from __future__ import annotations

import pytest

from engine.testing.profiles import scaled
from tests.properties.test_core_machine import CoreMachine

pytestmark = pytest.mark.layer1


class ShortCoreMachine(CoreMachine):
    """The core machine itself, unchanged."""


ShortCoreMachine.TestCase.settings = scaled(max_examples=100, stateful_step_count=40)
TestShortCoreMachine = ShortCoreMachine.TestCase
