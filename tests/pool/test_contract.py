"""Layer 1: the checkout contract (design section 6), validated without a pool.

Whatever a policy answers or raises, :func:`vet_checkout` / :func:`vet_checkin`
give a decision the pool can act on: the answer itself when it is within the
contract, else ``Remove`` plus a :class:`ContractViolation` that names the
callback, the value and what was expected (and the same is logged).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from engine.errors import ContractViolation, PoolTimeout
from engine.pool.contract import (
    CheckinOutcome,
    CheckoutRequest,
    DefaultPolicy,
    Ok,
    Remove,
    Skip,
    Verdict,
    WorkerInfo,
    vet_checkin,
    vet_checkout,
)

pytestmark = pytest.mark.layer1

WORKER = WorkerInfo(worker_id="w-1", pid=123, slot=0, calls=4, sessions=1, age=2.5)
REQUEST = CheckoutRequest(session=None, waited=0.0)
CLEAN = CheckinOutcome(clean=True, error=None, calls=1)
DIRTY = CheckinOutcome(clean=False, error=TimeoutError("late reply"), calls=1)


class Answers:
    """A policy that answers (or raises) whatever it was built with."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[tuple[str, Any, Any]] = []

    def _reply(self, method: str, worker: Any, other: Any) -> Any:
        self.seen.append((method, worker, other))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
        return self._reply("on_checkout", worker, request)

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any:
        return self._reply("on_checkin", worker, outcome)


# --- the default policy -------------------------------------------------------------


def test_default_policy_hands_out_every_worker_and_removes_dirty_ones() -> None:
    policy = DefaultPolicy()
    assert policy.on_checkout(WORKER, REQUEST) == Ok()
    assert policy.on_checkin(WORKER, CLEAN) == Ok()
    assert policy.on_checkin(WORKER, DIRTY) == Remove("worker left dirty by its last lease")
    assert vet_checkin(policy, WORKER, DIRTY) == Verdict(
        Remove("worker left dirty by its last lease"))


def test_remove_has_a_default_reason() -> None:
    assert Remove().reason == "removed by policy"


# --- answers within the contract ---------------------------------------------------


BUSY = PoolTimeout(timeout=1.0, reason="busy")


@pytest.mark.parametrize("answer", [Ok(), Remove("too old"), Skip(BUSY)])
def test_checkout_answers_within_the_contract_pass_unchanged(answer: Any) -> None:
    policy = Answers(answer)
    verdict = vet_checkout(policy, WORKER, REQUEST)
    assert verdict.decision is answer
    assert verdict.violation is None
    assert policy.seen == [("on_checkout", WORKER, REQUEST)]


@pytest.mark.parametrize("answer", [Ok(), Remove("leaks memory")])
def test_checkin_answers_within_the_contract_pass_unchanged(answer: Any) -> None:
    policy = Answers(answer)
    verdict = vet_checkin(policy, WORKER, CLEAN)
    assert verdict.decision is answer
    assert verdict.violation is None
    assert policy.seen == [("on_checkin", WORKER, CLEAN)]


def test_subclasses_of_the_decisions_are_decisions() -> None:
    class Fresh(Ok):
        pass

    verdict = vet_checkout(Answers(Fresh()), WORKER, REQUEST)
    assert isinstance(verdict.decision, Fresh) and verdict.violation is None


# --- answers outside the contract ---------------------------------------------------


CHECKOUT_EXPECTED = "Ok(), Remove(reason) or Skip(exception)"
CHECKIN_EXPECTED = "Ok() or Remove(reason)"


@pytest.mark.parametrize("answer", [
    None, "ok", True, 0, Ok, [Ok()],
    Remove(reason=3),  # type: ignore[arg-type]
    Skip(exception="busy"),  # type: ignore[arg-type]
    Skip(exception=PoolTimeout),  # type: ignore[arg-type] - the class, not an instance
])
def test_checkout_garbage_is_a_violation_and_removes_the_worker(
    answer: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="engine.pool.contract"):
        verdict = vet_checkout(Answers(answer), WORKER, REQUEST)
    assert verdict.decision == Remove(f"policy Answers.on_checkout returned {answer!r}")
    violation = verdict.violation
    assert isinstance(violation, ContractViolation)
    assert (violation.callback, violation.value, violation.expected) == (
        "Answers.on_checkout", answer, CHECKOUT_EXPECTED)
    # Logged with the callback's name, the value and the expected answers.
    assert [r.getMessage() for r in caplog.records] == [str(violation)]
    assert "Answers.on_checkout" in str(violation) and CHECKOUT_EXPECTED in str(violation)


@pytest.mark.parametrize("answer", [Skip(BUSY), None, "Ok"])
def test_checkin_accepts_neither_skip_nor_garbage(
    answer: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="engine.pool.contract"):
        verdict = vet_checkin(Answers(answer), WORKER, DIRTY)
    assert verdict.decision == Remove(f"policy Answers.on_checkin returned {answer!r}")
    assert verdict.violation is not None
    assert (verdict.violation.callback, verdict.violation.expected) == (
        "Answers.on_checkin", CHECKIN_EXPECTED)
    assert [r.getMessage() for r in caplog.records] == [str(verdict.violation)]


@pytest.mark.parametrize(("vet", "method", "expected"), [
    (vet_checkout, "on_checkout", CHECKOUT_EXPECTED),
    (vet_checkin, "on_checkin", CHECKIN_EXPECTED),
])
def test_a_policy_that_raises_is_a_violation_with_the_exception_as_reason(
    vet: Any, method: str, expected: str, caplog: pytest.LogCaptureFixture,
) -> None:
    error = KeyError("slot")
    with caplog.at_level(logging.ERROR, logger="engine.pool.contract"):
        verdict = vet(Answers(error), WORKER, REQUEST if method == "on_checkout" else CLEAN)
    assert verdict.decision == Remove(f"policy Answers.{method} raised KeyError: 'slot'")
    assert verdict.violation is not None
    assert (verdict.violation.callback, verdict.violation.value, verdict.violation.expected) == (
        f"Answers.{method}", error, expected)
    assert [r.getMessage() for r in caplog.records] == [
        f"policy Answers.{method} raised KeyError('slot'); treating the worker as Remove"]


def test_the_callback_is_named_by_its_qualified_name() -> None:
    class Nested:
        class Policy(DefaultPolicy):
            def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
                return None

    verdict = vet_checkout(Nested.Policy(), WORKER, REQUEST)
    assert verdict.violation is not None
    assert verdict.violation.callback == (
        "test_the_callback_is_named_by_its_qualified_name.<locals>.Nested.Policy.on_checkout")


def test_cancellation_and_interrupts_from_a_policy_propagate() -> None:
    # Only Exception is a contract violation: a policy must not swallow a
    # cancellation or a Ctrl-C by turning it into Remove.
    class Interrupted:
        def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vet_checkout(Interrupted(), WORKER, REQUEST)
