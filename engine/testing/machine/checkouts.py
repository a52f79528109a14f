"""Rules: start checkouts, call on held leases, release or cancel them.

The everyday traffic of the pool (and the one bundle other rules consume from).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import consumes, precondition, rule

from engine.testing.machine.base import MachineBase
from engine.testing.machine.draws import COMMANDS, SESSIONS, SLOT_PICKS
from engine.testing.machine.records import Checkout
from engine.testing.machine.state import CHECKOUTS


class CheckoutRules(MachineBase):
    """Checkouts and the calls made on their leases."""

    # Real workers are not deterministic: a precondition that reads the pool's
    # state could change which rules Hypothesis may draw on replay (a "flaky"
    # strategy). With real workers those rules are always enabled and do nothing
    # when they do not apply; fakes keep the preconditions (fewer wasted steps).
    @precondition(lambda self: not self.fake or len(self.active) < self.max_checkouts)
    @rule(target=CHECKOUTS, session=SESSIONS, timeout_pick=st.integers(0, 1),
          then=st.sampled_from(["hold", "call", "call"]), command=COMMANDS,
          arg=st.integers(0, 3), data=st.data())
    def checkout(self, session: str | None, timeout_pick: int, then: str, command: str,
                 arg: int, data: st.DataObject) -> Checkout:
        """Start a checkout: it holds its lease until a rule releases or cancels it
        (``hold``), or makes one call and releases (``call``, what pool.call does)."""
        timeout = self.checkout_timeouts[timeout_pick % len(self.checkout_timeouts)]
        planned = self.plan_call(command, arg, data) if then == "call" else None
        c = Checkout(next(self.numbers), session, timeout, one_call=planned)
        if len(self.active) >= self.max_checkouts:
            return self.skipped(c)
        self.active.append(c)
        c.handle = self.driver.spawn(self.hold, c, name=f"checkout {c.number}")
        self.settle()
        return c

    @rule(c=consumes(CHECKOUTS))
    def release(self, c: Checkout) -> None:
        """End the checkout block normally (the lease goes back)."""
        if c.phase in ("holding", "calling") and c.ops is not None:
            ops = c.ops
            self.driver.call_soon(lambda: ops.send_nowait(("release", None)))
        elif c.handle is not None and not c.handle.done:
            c.handle.cancel()  # still waiting for a worker: give up
        self.settle(until=lambda: c.phase == "done" or c.phase == "calling")
        if c.phase == "holding" and c.lease is not None and self.pool is not None:
            self.violations.append(f"{c!r} still holds its lease after release")

    @rule(c=consumes(CHECKOUTS))
    def cancel(self, c: Checkout) -> None:
        """Cancel the checkout's task wherever it is: queued, holding, mid-call."""
        if c.handle is not None and not c.handle.done:
            c.handle.cancel()
        self.settle(until=lambda: c.handle is None or c.handle.done)
        if c.handle is not None and not c.handle.done:
            self.violations.append(f"{c!r} did not end when cancelled")
            raise AssertionError("; ".join(self.violations))

    @precondition(lambda self: not self.fake or any(c.phase == "holding" for c in self.active))
    @rule(pick=SLOT_PICKS, command=COMMANDS, arg=st.integers(0, 3))
    def call(self, pick: int, command: str, arg: int) -> None:
        """One call on a held lease (the command is skipped if the app lacks it)."""
        self.call_on_held(pick, self.plan_call(command, arg, None))

    # Its own rule, enabled only for an app with app commands (a fact of its
    # hello, so replays agree): an st.data() argument on ``call`` itself
    # changed which rules Hypothesis draws for every machine.
    @precondition(lambda self: bool(self.app_commands))
    @rule(pick=SLOT_PICKS, arg=st.integers(0, 3), data=st.data())
    def call_app_command(self, pick: int, arg: int, data: st.DataObject) -> None:
        """One call of an app command on a held lease, with drawn arguments."""
        self.call_on_held(pick, self.plan_call(self.app_commands[0], arg, data))

    def call_on_held(self, pick: int, planned: tuple[str, int, Any]) -> None:
        holding = [c for c in self.active if c.phase == "holding"]
        if not holding:
            return
        c = holding[pick % len(holding)]
        record = self.new_call(c, *planned)
        ops = c.ops
        assert ops is not None
        c.phase = "calling"  # what the task will be doing once it reads the op
        self.driver.call_soon(lambda: ops.send_nowait(("call", record)))
        self.settle()
