"""engine.pool.lines on its own: the lazy heaps stay right through their
rebuilds (the core machine's heaps rarely grow past a rebuild)."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

from engine.pool.lines import FreeSlots, WaiterLine

pytestmark = pytest.mark.layer1


@attrs.define(eq=False)
class Item:
    id: int
    line: Any = None
    entry: int = 0


@attrs.define(eq=False)
class FakeSlot:
    index: int
    last_used: float = 0.0
    sessions: set[str] = attrs.Factory(set)
    free_token: int = 0


def test_waiter_line_keeps_arrival_order_through_rebuilds() -> None:
    """Thousands of waiters come and go (most leave from the middle of the
    line); the line always gives the earliest one still in it."""
    rng = random.Random(7)
    line = WaiterLine()
    inside: dict[int, Item] = {}
    for number in range(3000):
        item = Item(number)
        line.push(item)
        inside[number] = item
        for _ in range(rng.choice([0, 1, 1, 2])):
            if inside:
                leaving = inside.pop(rng.choice(list(inside)))
                line.discard(leaving)
        if rng.random() < 0.05 and inside:  # a grant taken back: same number again
            back = inside[rng.choice(list(inside))]
            line.discard(back)
            line.push(back)
        line.check(list(inside.values()))
    while inside:
        head = line.head()
        assert head is inside.pop(min(inside))
        line.discard(head)
    assert line.head() is None and line.live == 0


def test_free_slots_pick_the_best_through_rebuilds() -> None:
    """Slots freed and taken many times (each free spell with new sort keys):
    warmest() and fewest_sessions() stay right, and count is exact."""
    rng = random.Random(11)
    slots = [FakeSlot(i) for i in range(40)]
    free = FreeSlots(slots)
    clock = 0.0
    for _ in range(5000):
        slot = rng.choice(slots)
        clock += 1.0
        if slot.free_token and rng.random() < 0.5:
            free.remove(slot)
        else:
            slot.last_used = clock if rng.random() < 0.7 else slot.last_used
            slot.sessions = {f"s{n}" for n in range(rng.randint(0, 3))}
            free.add(slot)  # becomes free, or changes keys while free
        free.check([s for s in slots if s.free_token])
    for slot in slots:
        free.remove(slot)
    assert free.count == 0 and free.warmest() is None and free.fewest_sessions() is None
