"""Ordered structures the core keeps up to date instead of scanning.

The core must pick, in O(log n), the earliest waiter a freed worker may serve
and the best free worker for a waiter. Both are heaps with *lazy deletion*:
leaving a line only marks the item (its ``line`` or ``free_token`` changes), and
a stale entry is dropped when it reaches the top, or when the heap holds more
than twice its live items (a rebuild then costs no more than the pushes that
made the garbage, so every operation stays amortised O(log n)).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any, Protocol

_SLACK = 64  # stale entries tolerated before a rebuild (small heaps never rebuild)


class Queued(Protocol):
    """A waiter as the line sees it: ``id`` is its arrival number."""

    id: int
    line: Any
    entry: int


class WaiterLine:
    """Waiters in arrival order (smallest id first).

    A waiter put back (its grant was taken back) keeps its arrival number, so
    it goes back to its own place, ahead of everyone who came after it."""

    _tokens = itertools.count(1)

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Queued]] = []
        self.live = 0

    def push(self, waiter: Queued) -> None:
        waiter.line = self
        waiter.entry = token = next(self._tokens)
        heapq.heappush(self._heap, (waiter.id, token, waiter))
        self.live += 1
        if len(self._heap) > 2 * self.live + _SLACK:
            self._heap = [e for e in self._heap if self._valid(e)]
            heapq.heapify(self._heap)

    def discard(self, waiter: Queued) -> None:
        """Take ``waiter`` out (O(1): its entry goes stale)."""
        if waiter.line is self:
            waiter.line = None
            self.live -= 1

    def _valid(self, entry: tuple[int, int, Queued]) -> bool:
        waiter = entry[2]
        return waiter.line is self and waiter.entry == entry[1]

    def head(self) -> Any:
        """The earliest waiter in the line, or None."""
        heap = self._heap
        while heap:
            if self._valid(heap[0]):
                return heap[0][2]
            heapq.heappop(heap)
        return None

    def check(self, expected: Sequence[Queued]) -> None:
        """Assert the line holds exactly ``expected``, each once, live count right."""
        valid = [e[2].id for e in self._heap if self._valid(e)]
        want = sorted(w.id for w in expected)
        assert sorted(valid) == want, f"line holds {sorted(valid)}, expected {want}"
        assert self.live == len(want), f"line counts {self.live} live, holds {len(want)}"
        head = self.head()
        assert (head.id if head is not None else None) == (want[0] if want else None)


class Freeable(Protocol):
    index: int
    last_used: float
    sessions: set[str]
    free_token: int


class FreeSlots:
    """The free workers (READY, unleased), in the two orders the hand-off uses:
    warmest first (anonymous waiters: keep caches hot) and fewest sessions then
    warmest (a session's first call: spread sessions out). Ties go to the
    lowest slot index."""

    def __init__(self, slots: Sequence[Freeable]) -> None:
        self._slots = slots
        self._tokens = itertools.count(1)
        self._warm: list[tuple[float, int, int]] = []
        self._spread: list[tuple[int, float, int, int]] = []
        self.count = 0

    def add(self, slot: Freeable) -> None:
        """``slot`` became free (or its sort keys changed while free)."""
        if not slot.free_token:
            self.count += 1
        slot.free_token = token = next(self._tokens)
        heapq.heappush(self._warm, (-slot.last_used, slot.index, token))
        heapq.heappush(self._spread, (len(slot.sessions), -slot.last_used, slot.index, token))
        if len(self._warm) + len(self._spread) > 4 * self.count + _SLACK:
            self._warm = [e for e in self._warm if self._slots[e[-2]].free_token == e[-1]]
            self._spread = [e for e in self._spread if self._slots[e[-2]].free_token == e[-1]]
            heapq.heapify(self._warm)
            heapq.heapify(self._spread)

    def remove(self, slot: Freeable) -> None:
        if slot.free_token:
            slot.free_token = 0
            self.count -= 1

    def _top(self, heap: list[Any]) -> Any:
        while heap:
            entry = heap[0]
            slot = self._slots[entry[-2]]
            if slot.free_token == entry[-1]:
                return slot
            heapq.heappop(heap)
        return None

    def warmest(self) -> Any:
        """The most recently used free slot, or None."""
        return self._top(self._warm)

    def fewest_sessions(self) -> Any:
        """The free slot holding the fewest sessions (warmest among those), or None."""
        return self._top(self._spread)

    def check(self, free: Sequence[Freeable]) -> None:
        """Assert the structure holds exactly the slots ``free`` (recomputed by a
        scan), each under its current keys, and picks the right best ones."""
        assert self.count == len(free), f"{self.count} free counted, {len(free)} free"
        for heap, key in ((self._warm, lambda s: (-s.last_used, s.index)),
                          (self._spread, lambda s: (len(s.sessions), -s.last_used, s.index))):
            valid = sorted(e[:-1] for e in heap if self._slots[e[-2]].free_token == e[-1])
            assert valid == sorted(key(s) for s in free), f"free heap drifted: {valid}"
        warm = min(free, key=lambda s: (-s.last_used, s.index), default=None)
        spread = min(free, key=lambda s: (len(s.sessions), -s.last_used, s.index), default=None)
        assert self.warmest() is warm and self.fewest_sessions() is spread
