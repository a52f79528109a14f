"""Rules: faults inside the hand-off of a worker to a waiter.

Death before the hand-off check, death after the grant and before the waiter
takes it, and the waiter cancelled between selection and receipt: each armed
with :func:`~engine.testing.faults.inject_fault` and checked by
``check_fault`` (in :mod:`~engine.testing.machine.expectations`).
"""

from __future__ import annotations

from typing import Any

import trio
from hypothesis.stateful import precondition, rule

from engine.testing.faults import inject_fault
from engine.testing.machine.base import MachineBase
from engine.testing.machine.draws import SESSIONS
from engine.testing.machine.records import Checkout
from engine.testing.machine.state import CHECKOUTS


class HandoffFaultRules(MachineBase):
    """Faults armed inside the hand-off."""

    @precondition(lambda self: not self.closed and (not self.fake or self.fault is None))
    @rule()
    def kill_at_next_handoff(self) -> None:
        """Arm a fault: the next worker selected for a waiter dies before hand-off."""
        if self.fault is not None:
            return
        self.arm_fault("kill_before_handoff", inject_fault("kill_before_handoff", times=1))
        self.settle()

    @precondition(lambda self: not self.closed and (not self.fake or self.fault is None))
    @rule()
    def kill_after_next_grant(self) -> None:
        """Arm a fault: the next worker granted to a waiter dies before the waiter
        takes it (the waiter must not end up holding a dead worker)."""
        if self.fault is not None:
            return
        self.arm_fault("kill_after_grant",
                       inject_fault("kill_after_grant", times=1, pool=self.pool))
        self.settle()

    @precondition(lambda self: not self.closed and (not self.fake or (
        self.fault is None and len(self.active) < self.max_checkouts)))
    @rule(target=CHECKOUTS, session=SESSIONS)
    def checkout_cancelled_at_handoff(self, session: str | None) -> Checkout:
        """A checkout cancelled after its worker was selected, before it took it.

        The fault fires inside the hand-off check run by the checkout's own task
        (a worker was free); the worker must go back to READY, unharmed.
        """
        c = Checkout(next(self.numbers), session, max(self.checkout_timeouts),
                     cancel_at_handoff=True)
        if self.fault is not None or len(self.active) >= self.max_checkouts:
            return self.skipped(c)

        def cancel_requester(pool: Any, slot: int, worker: Any) -> None:
            if c.handle is not None and trio.lowlevel.current_task() is c.handle.task:
                c.handle.cancel_from_run()
                self.handoff_cancels.append((slot, worker.worker_id, c))

        self.arm_fault("cancel_before_handoff",
                       inject_fault("before_handoff", action=cancel_requester))
        self.active.append(c)
        c.handle = self.driver.spawn(self.hold, c, name=f"checkout {c.number}")
        self.settle()
        self.disarm_fault()
        return c
