"""The pool's timer: one Trio task that fires every deadline the pool keeps.

Queued checkouts (``checkout_timeout``), calls in flight (``call_timeout``)
and health probes (``health_timeout``) each add one entry to the timer's
:class:`~engine.pool.deadlines.Deadlines` heap instead of opening a cancel
scope of their own (a scope costs about a scheduler pass). The task sleeps in
one cancel scope whose deadline is the heap's ``wake_at``; when it wakes it
fires what is due (``deadline_passed()`` on each item), then asks the pool to
perform the core's resulting actions.

What the timer needs of its pool (its whole interface): the clock, and a way
to flush the core's actions after a round of expiries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from engine.pool.deadlines import Deadlines


class Expirable(Protocol):
    """Something with a deadline: told once when it passed (never early)."""

    def deadline_passed(self) -> None: ...


class PoolTimer:
    """Owns the pool's deadline heap and the task that fires it."""

    def __init__(self, clock: Callable[[], float], flush: Callable[[], None]) -> None:
        self._clock = clock
        self._flush = flush
        self._scope: trio.CancelScope | None = None
        #: The one deadline structure: add() / Deadlines.remove() on it directly
        #: (no extra call layer on the hot path).
        self.deadlines: Deadlines[Expirable] = Deadlines(on_earlier=self._rearm)

    def _rearm(self, deadline: float) -> None:
        if self._scope is not None:
            self._scope.deadline = deadline

    async def run(self) -> None:
        """The timer task (runs until the pool's nursery is cancelled)."""
        deadlines = self.deadlines
        while True:
            with trio.CancelScope(deadline=deadlines.wake_at) as self._scope:
                await trio.sleep_forever()
            self._scope = None
            for item in deadlines.pop_due(self._clock()):
                item.deadline_passed()
            self._flush()
