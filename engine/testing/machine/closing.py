"""Rules: close the pool, or start ``aclose()`` and cancel it; and what must hold after.

The end of an example's interesting part: every call in flight is marked cut
by the close, and afterwards no worker process may be left.
"""

from __future__ import annotations

import time

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from engine.process.procfs import pid_alive
from engine.testing.machine.base import MachineBase


class CloseRules(MachineBase):
    """Closing the pool, whole or cancelled."""

    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 5))
    def close(self, dice: int) -> None:
        """Close the pool (one time in six: it ends the interesting part)."""
        if dice:
            return
        self.begin_close()
        assert self.ctx is not None
        self.ctx.exit(autojump=self.fake, timeout=self.settle_timeout)
        self.settle()
        self.check_closed()

    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 5), after=st.sampled_from([0.0, 0.05, 0.3, 0.6, 2.0]))
    def close_cancelled(self, dice: int, after: float) -> None:
        """Start ``aclose()`` and cancel it ``after`` seconds (before it begins,
        while leases have their grace, while workers stop, or after it ended),
        then leave ``open_pool``: that must end within ``shutdown_grace`` plus
        the time to stop the workers, and leave no process (one time in six)."""
        if dice:
            return
        self.begin_close()
        assert self.ctx is not None
        began = self.driver.now()
        closing = self.driver.spawn(self.pool.aclose, name="aclose")
        if self.fake:
            self.driver.advance(after)
        else:
            give_up_at = time.monotonic() + after  # real clock: the host's will do
            self.driver.pump(until=lambda: closing.done or time.monotonic() >= give_up_at,
                             timeout=self.settle_timeout)
        cancelled_at = self.driver.now()
        closing.cancel()
        self.driver.pump(until=lambda: closing.done, autojump=self.fake,
                         timeout=self.settle_timeout)
        if closing.exception is not None:
            raise AssertionError(f"a cancelled aclose() raised {closing.exception!r}")
        assert self.pool.closed, "aclose() was cancelled before it marked the pool closed"
        # Leaving open_pool finishes the close (the driver's timeout is the hang
        # guard for real workers).
        self.ctx.exit(autojump=self.fake, timeout=self.settle_timeout)
        if self.fake:
            # Virtual time: exact. The close began at `began`; whenever aclose()
            # was given up, leaving open_pool ends by the bound (or at once, if
            # the close had already ended).
            assert self.factory is not None
            bound = self.pool.config.shutdown_grace + self.factory.grace
            left = self.driver.now()
            assert left <= max(cancelled_at, began + bound) + 1e-6, \
                f"leaving open_pool took until {left - began:g}s after aclose() began " \
                f"(cancelled at {cancelled_at - began:g}s; bound {bound:g}s)"
        self.settle()
        self.check_closed()

    def begin_close(self) -> None:
        self.closed = True
        self.disarm_fault()
        for c in self.active:
            for record in c.calls:
                if not record.done:
                    record.closed_during = True

    def check_closed(self) -> None:
        """After leaving open_pool: closed, every worker process gone and waited for."""
        stats = self.pool.statistics()
        assert stats.closed
        assert not self.pool.worker_pids(), f"pids after close: {self.pool.worker_pids()}"
        if self.factory is not None:
            assert not self.factory.unreaped, \
                f"fakes alive after close: {[w.worker_id for w in self.factory.unreaped]}"
        alive = [pid for pid in self.real_pids if pid_alive(pid)]
        assert not alive, f"processes left after close: {alive}"
