"""``engine campaign`` means something: app commands are called with arguments
of their declared shape, and a campaign whose app commands mostly fail with a
remote error is a finding, not a pass."""

from __future__ import annotations

import logging
import re
import time

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from engine.testing.campaign import app_call_finding, run_campaign
from engine.testing.campaign import main as campaign_main
from engine.testing.machine import BudgetSpent, pool_machine

COMMANDS = ["ping", "incr", "sumsq"]


@pytest.mark.layer1
def test_a_command_failing_in_most_of_its_calls_is_a_finding() -> None:
    assert app_call_finding({}) is None
    assert app_call_finding({"incr": {"ok": 3, "TypeError": 3}}) is None  # half is not most
    finding = app_call_finding({"incr": {"ok": 1, "TypeError": 5, "KeyError": 2},
                                "sumsq": {"ok": 9}, "nope": {"UnknownCommand": 1}})
    assert finding is not None
    assert "incr: 8 calls, 1 ok, TypeError 5, KeyError 2" in finding
    assert "nope: 1 call, 0 ok, UnknownCommand 1" in finding
    assert "sumsq" not in finding
    assert "the app does not have nope" in finding and "args=" in finding


# Real workers on a shared machine: a short campaign may end before its first
# app-command call. Each test runs up to ATTEMPTS campaigns (new seeds) until
# one made app calls, and judges that one.
ATTEMPTS = 3


@pytest.mark.layer3
@pytest.mark.parametrize("commands", [None, COMMANDS], ids=["declared", "named"])
def test_a_user_app_with_declared_shapes_passes(commands: list[str] | None) -> None:
    for seed in range(11, 11 + ATTEMPTS):
        lines: list[str] = []
        result = run_campaign("tests.apps.counters", minutes=0.04, size=1, seed=seed,
                              batch=10, steps=20, commands=commands, out=lines.append)
        assert result.passed, "\n".join(lines)
        if result.app_calls:
            break
    assert result.app_calls, "the campaign never called an app command"
    assert set(result.app_calls) <= {"incr", "sumsq"}
    # every call got arguments its handler accepts: nothing but successes
    assert all(set(outcomes) == {"ok"} for outcomes in result.app_calls.values()), \
        result.app_calls
    assert any(line.startswith("app commands: ") for line in lines)


@pytest.mark.layer3
def test_random_arguments_for_commands_that_refuse_them_are_a_finding(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The example: undeclared commands get arbitrary JSON, which they refuse.
    for seed in range(5, 5 + ATTEMPTS):
        code = campaign_main(["--app", "tests.apps.undeclared_counters", "--commands",
                              ",".join(COMMANDS), "--minutes", "0.04", "--size", "1",
                              "--seed", str(seed), "--batch", "10", "--steps", "20"])
        out = capsys.readouterr().out
        if "app commands: " in out:
            break
    assert code == 1, out
    assert "engine campaign finding: most calls of these commands failed" in out
    named = re.findall(r"^  (incr|sumsq): (\d+) calls?, (\d+) ok, (.+)$", out, re.M)
    assert named, out
    for _, total, ok, errors in named:
        # e.g. "TypeError 3, KeyError 1": the handlers' own refusals, counted
        counts = [int(n) for n in re.findall(r"(?:TypeError|KeyError) (\d+)", errors)]
        assert sum(counts) * 2 > int(total) and int(ok) + sum(counts) == int(total), errors
    assert "FAILED (finding)" in out and "passed:" not in out


@pytest.mark.layer3
def test_the_kills_a_campaign_causes_are_counted_in_its_summary_not_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.pool")
    for seed in range(21, 21 + ATTEMPTS):
        lines: list[str] = []
        result = run_campaign("engine.workers.programs", minutes=0.04, size=2, seed=seed,
                              batch=10, steps=20, out=lines.append)
        assert result.passed, "\n".join(lines)
        if result.expected_deaths:
            break
    assert result.expected_deaths > 0, "the campaign killed no worker"
    crashes = [r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING and "crashed" in r.getMessage()]
    assert crashes == []  # not one "worker ... crashed: signal 9" line per kill
    assert f"{result.expected_deaths} worker deaths caused on purpose" in lines[-1]
    # every one of them was a death the pool was told of and logged quietly
    quiet = [r for r in caplog.records if "(expected)" in r.getMessage()]
    assert len(quiet) >= result.expected_deaths


@pytest.mark.layer2
def test_a_machine_past_its_stop_after_starts_no_example() -> None:
    # Ends the Hypothesis run at once, as itself: not a failure, no replay
    # (a rejected example was reported as a flaky strategy).
    machine = pool_machine(workers="fake", sizes=(1,))
    machine.stop_after = time.monotonic()
    with pytest.raises(BudgetSpent):
        run_state_machine_as_test(machine, settings=settings(
            max_examples=5, stateful_step_count=2, deadline=None, database=None))
    assert machine.totals["examples"] == 0


@pytest.mark.layer3
def test_a_campaign_stops_starting_examples_once_its_budget_is_spent() -> None:
    # One batch of 10,000 examples would take an hour: the budget ends it
    # after about one example past 1.2 s (before, only between batches).
    lines: list[str] = []
    result = run_campaign("engine.workers.programs", minutes=0.02, size=1, seed=3,
                          batch=10_000, steps=5, out=lines.append)
    assert result.passed, "\n".join(lines)
    assert 0 < result.examples < 10_000 and result.batches == 1
