"""The README's pattern for a rule of your own on the pool state machine: a
subclass of ``pool_machine(...)`` whose rule makes a call through the
machine's driver and judges its answer. Run here on fake workers and on real
workers of a user's app (tests.apps.counters), as the README shows it, so the
documented pattern cannot rot."""

from __future__ import annotations

import collections
import functools
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from engine.errors import EngineError
from engine.testing.machine import pool_machine


def machine_with_own_rule(base: type, command: str, args: Any, expected: Any,
                          outcomes: collections.Counter[str]) -> type:
    class WithOwnRule(base):  # type: ignore[valid-type,misc]
        @rule(n=st.integers(-100, 100))
        def my_command_answers(self, n: int) -> None:
            if self.pool is None or self.closed:
                return  # no pool open in this example (yet, or any more)
            call = functools.partial(self.pool.call, command, args(n), checkout_timeout=0.5)
            handle = self.driver.spawn(call)
            self.settle(until=lambda: handle.done)
            if not handle.done:
                # Fake workers: queued behind checkouts the machine holds, and
                # virtual time stands still while it settles: give up.
                handle.cancel()
                self.settle(until=lambda: handle.done)
                outcomes["gave up"] += 1
            elif handle.exception is None:
                assert handle.value == expected(n)
                outcomes["ok"] += 1
            else:
                # Crashes, kills, timeouts, a closed pool: typed, never anything else.
                assert isinstance(handle.exception, EngineError), repr(handle.exception)
                outcomes[type(handle.exception).__name__] += 1

    return WithOwnRule


@pytest.mark.layer2
def test_a_rule_of_your_own_on_fake_workers() -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    machine = machine_with_own_rule(pool_machine(workers="fake"), "echo",
                                    lambda n: {"n": n}, lambda n: {"n": n}, outcomes)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=20, deadline=None, database=None))
    assert outcomes["ok"] > 0, outcomes


@pytest.mark.layer3
def test_a_rule_of_your_own_on_real_workers_of_your_app() -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    base = pool_machine(workers="real", app="tests.apps.counters", sizes=(1,))
    machine = machine_with_own_rule(base, "sumsq", lambda n: {"xs": [n, 2]},
                                    lambda n: n * n + 4, outcomes)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=15, stateful_step_count=15, deadline=None, database=None))
    assert outcomes["ok"] > 0, outcomes


@pytest.mark.layer1
def test_each_machine_class_counts_its_own_examples() -> None:
    base = pool_machine(workers="fake")

    class Mine(base):  # type: ignore[valid-type,misc]
        pass

    class Sibling(base):  # type: ignore[valid-type,misc]
        pass

    counters = [base.totals, Mine.totals, Sibling.totals]
    assert len({id(c) for c in counters}) == 3
    assert len({id(c.app_calls) for c in (base, Mine, Sibling)}) == 3
