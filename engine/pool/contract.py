"""The checkout contract (design section 6): Ok / Remove / Skip and policy validation.

A policy decides at checkout and checkin. Whatever a policy does - return the
wrong type, return None, raise - the pool survives: the result is validated here
and anything outside the contract becomes ``Remove`` plus a ``ContractViolation``
report. Validation is pure so the sans-IO core can use it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import attrs

from engine.errors import ContractViolation

logger = logging.getLogger("engine.pool.contract")


@attrs.frozen
class Ok:
    """Proceed: hand the worker over (checkout) or keep it (checkin)."""


@attrs.frozen
class Remove:
    """Stop and replace this worker; at checkout the waiter is served by another."""

    reason: str = "removed by policy"


@attrs.frozen
class Skip:
    """Fail this waiter with ``exception``; the worker stays ready."""

    exception: BaseException


CheckoutDecision = Ok | Remove | Skip
CheckinDecision = Ok | Remove


@attrs.frozen
class WorkerInfo:
    """What a policy sees of a worker."""

    worker_id: str
    pid: int | None
    slot: int
    calls: int
    sessions: int
    age: float


@attrs.frozen
class CheckoutRequest:
    session: str | None
    waited: float


@attrs.frozen
class CheckinOutcome:
    """How the lease ended: ``clean`` is False when the worker must not be reused
    as it is. ``draining``: its last call was cancelled or timed out in flight,
    and the pool will have the worker give that request back (within
    ``cancel_grace``) and then reuse it, with its sessions; Remove kills it
    instead."""

    clean: bool
    error: BaseException | None
    calls: int
    draining: bool = False


class Policy(Protocol):
    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> Any: ...
    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> Any: ...


class DefaultPolicy:
    """Hand out any worker that passed the liveness checks; remove dirty ones."""

    def on_checkout(self, worker: WorkerInfo, request: CheckoutRequest) -> CheckoutDecision:
        return Ok()

    def on_checkin(self, worker: WorkerInfo, outcome: CheckinOutcome) -> CheckinDecision:
        if not outcome.clean and not outcome.draining:
            return Remove("worker left dirty by its last lease")
        return Ok()


@attrs.frozen
class Verdict:
    """A validated decision plus the violation, if the policy broke the contract.

    ``by_policy`` is False for the pool's own hand-off checks (a dead process,
    a dirty channel), which decide before the policy is asked.
    """

    decision: Ok | Remove | Skip
    violation: ContractViolation | None = None
    by_policy: bool = True


def _callback_name(policy: Any, method: str) -> str:
    return f"{type(policy).__qualname__}.{method}"


def vet_checkout(policy: Any, worker: WorkerInfo, request: CheckoutRequest) -> Verdict:
    """Run ``policy.on_checkout`` and validate its answer."""
    return _vet(policy, "on_checkout", (worker, request), (Ok, Remove, Skip),
                "Ok(), Remove(reason) or Skip(exception)")


def vet_checkin(policy: Any, worker: WorkerInfo, outcome: CheckinOutcome) -> Verdict:
    """Run ``policy.on_checkin`` and validate its answer."""
    return _vet(policy, "on_checkin", (worker, outcome), (Ok, Remove),
                "Ok() or Remove(reason)")


def _vet(policy: Any, method: str, args: tuple[Any, ...], allowed: tuple[type, ...],
         expected: str) -> Verdict:
    name = _callback_name(policy, method)
    try:
        value = getattr(policy, method)(*args)
    except Exception as exc:
        violation = ContractViolation(callback=name, value=exc, expected=expected)
        logger.error("policy %s raised %r; treating the worker as Remove", name, exc)
        return Verdict(Remove(f"policy {name} raised {type(exc).__name__}: {exc}"), violation)
    if isinstance(value, Ok | Remove | Skip) and isinstance(value, allowed) \
            and _well_formed(value):
        return Verdict(value)
    violation = ContractViolation(callback=name, value=value, expected=expected)
    logger.error("%s", violation)
    return Verdict(Remove(f"policy {name} returned {value!r}"), violation)


def _well_formed(value: Any) -> bool:
    # attrs does not type-check fields; a Skip must carry a real exception and a
    # Remove a string, or the pool would later fail while using them.
    if isinstance(value, Skip):
        return isinstance(value.exception, BaseException)
    if isinstance(value, Remove):
        return isinstance(value.reason, str)
    return True
