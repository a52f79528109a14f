"""Deadlines: the pool's pending deadlines in one heap (pure, no Trio).

Every deadline the pool keeps (a queued checkout's, a call's in flight, a health
probe's) is one entry here, and the pool's timer (:mod:`engine.pool.timer`)
sleeps until :attr:`Deadlines.wake_at`. The shape is that of Trio's own
deadline heap:

* ``add`` pushes an entry keyed by (deadline, sequence number): O(log n);
* ``remove`` only marks the entry (lazy deletion): O(1), so a call that ends
  before its deadline, the usual case, costs no search and no re-heapify;
* ``pop_due(now)`` pops the entries due at ``now`` plus any removed ones at the
  head, and returns the live items in deadline order. Nothing scans the
  pending deadlines: a fire touches only what it pops;
* removed entries left deeper in the heap are dropped in one pass once they
  outnumber the live ones (amortised O(1) per add), so a busy pool's heap
  stays proportional to its calls in flight.

``wake_at`` is never later than the earliest live deadline; it may be earlier
(the entry it was set for has been removed since), which costs the timer one
spurious wake-up. Each wake-up drops the removed entries at the head and
re-arms on a live one, so steady traffic whose calls end in time costs about
one wake-up per timeout period, not one per call.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: One pending deadline: ``[deadline, sequence, item]``; item None once removed.
#: A list so that removal can mark it in place; compared by (deadline, sequence).
Entry = list[Any]

# Removed entries are dropped once the heap holds more than this many entries
# and more than twice its live ones.
_MIN_PRUNE = 64


def _nothing(deadline: float) -> None:
    pass


class Deadlines(Generic[T]):
    """Pending deadlines with lazy deletion; ``T`` is whatever the owner fires."""

    __slots__ = ("_heap", "_on_earlier", "_prune_at", "_sequence", "wake_at")

    def __init__(self, on_earlier: Callable[[float], None] | None = None) -> None:
        self._heap: list[Entry] = []
        self._sequence = itertools.count()
        self._prune_at = _MIN_PRUNE
        # Told when an added deadline is earlier than wake_at (the owner's alarm
        # must move); rare: deadlines mostly come in increasing order.
        self._on_earlier = on_earlier or _nothing
        self.wake_at = math.inf

    def __len__(self) -> int:
        """Entries in the heap, removed ones not yet dropped included."""
        return len(self._heap)

    def add(self, deadline: float, item: T) -> Entry:
        """Schedule ``item`` (not None) for ``deadline``; returns the entry to remove."""
        entry = [deadline, next(self._sequence), item]
        heap = self._heap
        heappush(heap, entry)
        if deadline < self.wake_at:
            self.wake_at = deadline
            self._on_earlier(deadline)
        if len(heap) > self._prune_at:
            self._prune()
        return entry

    @staticmethod
    def remove(entry: Entry) -> None:
        """Forget an entry (it will never fire). Removing twice, or after it
        fired, does nothing."""
        entry[2] = None

    def pop_due(self, now: float) -> list[T]:
        """Pop every live entry due at ``now`` (deadline <= now), earliest first,
        and recompute ``wake_at``."""
        heap = self._heap
        due: list[T] = []
        while heap and (heap[0][0] <= now or heap[0][2] is None):
            item = heappop(heap)[2]
            if item is not None:
                due.append(item)
        self.wake_at = heap[0][0] if heap else math.inf
        return due

    def live(self) -> int:
        """How many entries will still fire (O(n): for tests and introspection)."""
        return sum(1 for entry in self._heap if entry[2] is not None)

    def _prune(self) -> None:
        live = [entry for entry in self._heap if entry[2] is not None]
        if 2 * len(live) >= len(self._heap):
            # Mostly live: pruning would gain little; look again when it doubles.
            self._prune_at = 2 * len(self._heap)
            return
        heapify(live)
        self._heap = live
        self._prune_at = max(_MIN_PRUNE, 2 * len(live))
