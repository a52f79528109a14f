"""Properties of the pool's deadline heap, ``engine.pool.deadlines`` (layer 1: pure).

Random interleavings of adds (any deadline, earlier or later than the others,
ties included), removals (live, already fired, already removed) and fires (time
moves forward by random steps, sometimes not at all):

* every item fires at most once, only at a ``now`` at or after its deadline
  (never early), and no later than the first fire at or after its deadline;
* a removed item never fires;
* items fire in deadline order, ties in the order they were added;
* ``wake_at`` is never later than the earliest live deadline (the timer can't
  oversleep one), and the earlier-deadline hook fires exactly when it moves;
* the heap stays proportional to the most entries ever live (removed ones
  are dropped), and exactly as the module says: an add that takes the heap past
  its threshold (64 at first) drops the removed entries if they are the
  majority, the threshold becoming twice the live ones (at least 64); if not,
  nothing is dropped and the threshold becomes twice the heap.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.pool.deadlines import Deadlines
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer1

DEADLINES = st.one_of(st.integers(0, 50).map(float), st.floats(0.0, 50.0))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), DEADLINES),
        st.tuples(st.just("remove"), st.integers(0, 10_000)),
        st.tuples(st.just("fire"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0, 100.0])),
    ),
    max_size=400,
)


class Item:
    def __init__(self, number: int, deadline: float) -> None:
        self.number = number
        self.deadline = deadline
        self.removed = False
        self.fired_at: float | None = None

    def __repr__(self) -> str:
        return f"<item {self.number} due {self.deadline}>"


@scaled(300)
@given(ops=OPS)
def test_each_deadline_fires_once_on_time_and_removed_ones_never(
        ops: list[tuple[str, Any]]) -> None:
    check_ops(ops)


def _add_then_remove(times: int, first: int) -> list[tuple[str, Any]]:
    """``times`` calls that end in time: each added, then removed (by index)."""
    ops: list[tuple[str, Any]] = []
    for n in range(first, first + times):
        ops += [("add", 10.0), ("remove", n)]
    return ops


@pytest.mark.parametrize("ops", [
    # 30 in flight, then ended calls until the heap passes 64: mostly removed,
    # dropped; then again from the smaller threshold.
    [("add", 10.0)] * 30 + _add_then_remove(35, 30) + _add_then_remove(34, 65),
    # 60 in flight, a few ended: mostly live at the threshold, nothing dropped,
    # the threshold doubles.
    [("add", 10.0)] * 60 + _add_then_remove(5, 60) + [("add", 10.0)] * 70,
    # The same, then ended calls: the doubled threshold holds until it is passed.
    [("add", 10.0)] * 60 + _add_then_remove(5, 60) + _add_then_remove(140, 65),
    # 20 in flight: the heap reaches the threshold exactly, then passes it.
    [("add", 10.0)] * 20 + _add_then_remove(44, 20) + [("add", 10.0)] * 3,
], ids=["ended-majority", "live-majority", "live-majority-then-ended", "at-threshold"])
def test_pruning_follows_the_documented_policy(ops: list[tuple[str, Any]]) -> None:
    """The thresholds themselves (random interleavings rarely reach them)."""
    check_ops(ops)


def check_ops(ops: list[tuple[str, Any]]) -> None:
    moves: list[float] = []
    deadlines: Deadlines[Item] = Deadlines(on_earlier=moves.append)
    items: list[Item] = []
    entries: list[Any] = []
    now = 0.0
    last_fired: tuple[float, int] = (-math.inf, -1)
    peak = 0
    prune_at = 64  # the model's threshold

    def live() -> list[Item]:
        return [i for i in items if not i.removed and i.fired_at is None]

    for op, value in ops:
        if op == "add":
            before = deadlines.wake_at
            size, alive = len(deadlines) + 1, deadlines.live() + 1
            moved = len(moves)
            item = Item(len(items), now + value)
            items.append(item)
            entries.append(deadlines.add(item.deadline, item))
            assert (len(moves) > moved) == (item.deadline < before), \
                "the alarm hook must be told exactly when the earliest deadline moves"
            if item.deadline < before:
                assert moves[-1] == item.deadline == deadlines.wake_at
            if size > prune_at:
                if 2 * alive >= size:
                    prune_at = 2 * size
                else:
                    size, prune_at = alive, max(64, 2 * alive)
            assert len(deadlines) == size, f"heap of {len(deadlines)}, expected {size}"
        elif op == "remove" and items:
            index = value % len(items)
            deadlines.remove(entries[index])
            if items[index].fired_at is None:
                items[index].removed = True
        elif op == "fire":
            now += value
            for item in deadlines.pop_due(now):
                assert not item.removed, f"{item} fired after it was removed"
                assert item.fired_at is None, f"{item} fired twice"
                assert item.deadline <= now, f"{item} fired early, at {now}"
                key = (item.deadline, item.number)
                assert key > last_fired, f"{item} fired out of order"
                last_fired = key
                item.fired_at = now
            # Nothing due is left behind: the next fire would be late.
            assert all(i.deadline > now for i in live()), "a due deadline did not fire"
            last_fired = (-math.inf, -1)
        pending = live()
        if pending:
            assert deadlines.wake_at <= min(i.deadline for i in pending), \
                "the timer would oversleep a live deadline"
        assert deadlines.live() == len(pending)
        peak = max(peak, len(pending))
        assert len(deadlines) <= max(64, 4 * peak) + 1, "removed entries pile up"

    # In the end every deadline that was not removed fires, once.
    for item in deadlines.pop_due(math.inf):
        assert not item.removed and item.fired_at is None
        item.fired_at = math.inf
    assert all(i.removed or i.fired_at is not None for i in items)
    assert deadlines.wake_at == math.inf and len(deadlines) == 0


def test_removed_entries_are_dropped_without_waiting_for_their_deadline() -> None:
    deadlines: Deadlines[str] = Deadlines()
    for n in range(10_000):
        deadlines.remove(deadlines.add(1000.0 + n, f"call {n}"))  # calls that ended
    keep = deadlines.add(5000.0, "in flight")
    # Removed entries were pruned as they piled up: the heap holds a few dozen.
    assert len(deadlines) <= 64 + 1
    assert deadlines.live() == 1
    # A fire long before any deadline drops the removed heads and re-arms on
    # the live one: one wake-up, not one per ended call.
    assert deadlines.pop_due(0.0) == []
    assert deadlines.wake_at == 5000.0
    assert deadlines.pop_due(5000.0) == ["in flight"]
    deadlines.remove(keep)  # after it fired: nothing happens
    assert deadlines.wake_at == math.inf


def test_an_earlier_deadline_moves_the_alarm_and_a_later_one_does_not() -> None:
    moves: list[float] = []
    deadlines: Deadlines[str] = Deadlines(on_earlier=moves.append)
    deadlines.add(10.0, "a")
    deadlines.add(20.0, "b")
    deadlines.add(5.0, "c")
    assert moves == [10.0, 5.0]
    assert deadlines.pop_due(10.0) == ["c", "a"]
    assert deadlines.wake_at == 20.0
