"""Rules for fake workers only: scripted starts, deaths while starting, virtual time.

Apart because they need the fake factory and the mock clock; with real
workers their preconditions keep them off.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from engine.testing.fakes import Script
from engine.testing.machine.base import MachineBase
from engine.testing.machine.draws import SLOT_PICKS

# Scripts a fake worker may be started with (rule ``plan_next_start``).
PLANS: dict[str, Script] = {
    "slow": Script(start_delay=2.0),
    "crash_before_hello": Script(crash_before_hello=3),
    "bad_hello": Script(bad_hello=True),
    "crash_after_hello": Script(crash_after=1.0, crash_code=9),
    "legacy_lists": Script(program_list="legacy"),
    "fragmented_replies": Script(reply_mode="fragmented"),
    "wrong_reply_ids": Script(reply_mode="wrong_id"),
    "garbage_replies": Script(reply_mode="garbage"),
    "truncated_replies": Script(reply_mode="truncated"),
}


class FakeWorkerRules(MachineBase):
    """Scripted starts, deaths during start and virtual time."""

    @precondition(lambda self: self.fake and not self.closed)
    @rule(plan=st.sampled_from(sorted(PLANS)))
    def plan_next_start(self, plan: str) -> None:
        """Script the next worker the pool starts (after a kill or crash)."""
        assert self.factory is not None
        self.factory.plan.append(PLANS[plan])

    @precondition(lambda self: self.fake)
    @rule(pick=SLOT_PICKS)
    def kill_starting_worker(self, pick: int) -> None:
        """Kill a worker that has not sent its hello yet (death during start)."""
        assert self.factory is not None
        starting = [w for w in self.factory.workers if not w.ready and w.exit_info is None]
        if starting:
            self.driver.run_sync(starting[pick % len(starting)].kill)
        self.settle()

    @precondition(lambda self: self.fake)
    @rule(seconds=st.sampled_from([0.1, 0.6, 2.5, 10.0]))
    def advance(self, seconds: float) -> None:
        """Let virtual time pass: slow starts finish, timeouts expire, backoffs end."""
        self.driver.advance(seconds)
        self.settle()
