"""Rule: a call given up mid-call (cancelled or timed out), cooperative or stubborn.

Apart from the plain calls because it drives the abandon/drain protocol: the
caller keeps its lease, and the expectations then check how the worker drains.
"""

from __future__ import annotations

import time

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from engine.testing.machine.base import MachineBase
from engine.testing.machine.draws import SLOT_PICKS


class CancellationRules(MachineBase):
    """Calls given up in flight, and the drains that follow."""

    @precondition(lambda self: not self.fake or any(c.phase == "holding" for c in self.active))
    @rule(pick=SLOT_PICKS, stubborn=st.booleans(), how=st.sampled_from(["cancel", "timeout"]))
    def cancel_mid_call(self, pick: int, stubborn: bool, how: str) -> None:
        """A long ``sleep`` on a held lease, then its caller gives up mid-call:
        cancelled (``how="cancel"``) or past its timeout. The handler gives the
        request back (cooperative) or never does (``stubborn``). The caller
        keeps its lease: a later rule calls again (which drains first),
        releases it or cancels it (the pool drains the worker)."""
        holding = [c for c in self.active if c.phase == "holding"]
        if not holding or "sleep" not in self.commands:
            self.settle()
            return
        c = holding[pick % len(holding)]
        record = self.new_call(c, "sleep", 0)
        record.args = {"seconds": 500.0 + next(self.sleep_ids) * 1e-6, "stubborn": stubborn}
        record.timeout = 0.5 if how == "timeout" else 10_000.0
        if stubborn:
            record.abandon = "stubborn"
            self.expect_grace_kill(c)
        ops = c.ops
        assert ops is not None
        c.phase = "calling"
        self.driver.call_soon(lambda: ops.send_nowait(("call", record)))
        if self.fake:
            self.driver.pump()  # the fake handler is running now
        else:
            # Let a real worker start the handler (else it is abandoned before
            # it starts, which is answered at once: also correct, but not the
            # interesting case). The host's clock: a step, not an assertion.
            began = time.monotonic()
            self.driver.pump(until=lambda: time.monotonic() - began >= 0.2 or record.done,
                             timeout=self.settle_timeout)
        if how == "cancel":
            scope_of = record

            def cancel() -> None:
                if scope_of.scope is not None:
                    scope_of.scope.cancel()

            self.driver.call_soon(cancel)
            self.settle(until=lambda: record.done)
        elif self.fake:
            self.driver.advance(0.5)  # the call's timeout
            self.settle()
        else:
            self.settle(until=lambda: record.done)
        if record.done and record.error is None and not record.cancelled \
                and not record.broken_before and not record.killed_during:
            self.violations.append(f"{c!r}: a 500 s sleep given up after at most 0.5 s "
                                   f"answered {record.result!r}")
        if self.violations:
            raise AssertionError("; ".join(self.violations))
