"""The busy-poll policy both ends of a worker's pipe share (layer 1: pure, fake clock).

Every branch of the rule: poll while frames usually come within the budget,
probe every 8th wait otherwise, measure from the start of each wait; plus the
policy's contract with the ends (one clock read per decision and per
observation) and its import weight (the worker imports it at start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from engine.busy_poll import (
    DEFAULT_BUSY_POLL,
    DESCHEDULED,
    MAX_BACKOFF,
    MAX_BUSY_POLL,
    MAX_BUSY_POLL_US,
    PROBE_EVERY,
    SMOOTHING,
    STRIKES,
    BusyPollPolicy,
)

pytestmark = pytest.mark.layer1

# Exact binary fractions, so that averages and deadlines compare exactly.
BUDGET = 2.0 ** -10
SLOW = 1.0  # a frame that took far longer than the budget
FAST = 0.0  # a frame that was there at the first look


class FakeClock:
    """Time moves only when the test says so; counts its reads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def policy(typical_wait: float = 0.0, budget: float = BUDGET,
           strikes: int = 1) -> tuple[BusyPollPolicy, FakeClock]:
    """A policy on a fake clock. The contention tests below check the mechanics
    with one strike (one lost poll is contention); the default of two strikes
    has tests of its own at the end."""
    clock = FakeClock()
    return BusyPollPolicy(budget, typical_wait=typical_wait, clock=clock,
                          strikes_to_contend=strikes), clock


# One pass of a poll loop on a CPU of its own: a few microseconds (exact).
PASS = 2.0 ** -18


def frame(p: BusyPollPolicy, clock: FakeClock, took: float) -> bool:
    """One wait whose frame came ``took`` seconds after it began; True if it polled.

    A polling wait polls in passes of :data:`PASS` until the frame comes or the
    policy says stop (never descheduled), then blocks for the rest."""
    until = p.begin_wait()
    arrives = clock.now + took
    if until:
        while clock.now + PASS < arrives:
            clock.now += PASS
            if not p.keep_polling(until):
                break
    clock.now = arrives
    p.frame_arrived()
    return bool(until)


def polled_waits(p: BusyPollPolicy, clock: FakeClock, took: float, waits: int) -> list[int]:
    """The policy's own wait numbers on which it said "poll"."""
    polled = []
    for _ in range(waits):
        if frame(p, clock, took):
            polled.append(p.waits)
    return polled


# --- the bounds --------------------------------------------------------------------------


def test_bounds_are_one_set_of_numbers() -> None:
    assert 0 < DEFAULT_BUSY_POLL <= MAX_BUSY_POLL
    assert MAX_BUSY_POLL == 0.01
    # The parent's cap (seconds) and the worker's command-line cap (µs) agree.
    assert MAX_BUSY_POLL * 1_000_000 == MAX_BUSY_POLL_US


@pytest.mark.parametrize("budget", [0, 0.0, -1e-6, float("nan"), float("inf")])
def test_a_policy_needs_a_positive_finite_budget(budget: float) -> None:
    with pytest.raises(ValueError, match=r"above 0.*use no policy"):
        BusyPollPolicy(budget)


def test_the_default_clock_is_perf_counter() -> None:
    import time

    assert BusyPollPolicy(BUDGET).clock is time.perf_counter


# --- the decision ------------------------------------------------------------------------


def test_a_polling_wait_polls_for_the_budget_from_its_start() -> None:
    p, clock = policy()
    assert p.begin_wait() == 1000.0 + BUDGET
    clock.now += PASS
    assert p.keep_polling(1000.0 + BUDGET)
    clock.now += PASS
    p.frame_arrived()
    clock.now += 5.0  # between waits: not measured
    # The deadline is the budget after *this* wait began.
    assert p.begin_wait() == 1005.0 + 2 * PASS + BUDGET


def test_the_starting_average_decides_the_first_wait() -> None:
    # The parent starts at 0: its first wait (the hello) polls.
    parent, _ = policy(typical_wait=0.0)
    assert parent.begin_wait()
    # The worker starts at the budget: nothing is known, so it does not.
    worker, _ = policy(typical_wait=BUDGET)
    assert worker.begin_wait() == 0.0


def test_frames_within_the_budget_poll_on_every_wait() -> None:
    p, clock = policy()
    assert polled_waits(p, clock, took=BUDGET / 4, waits=20) == list(range(1, 21))


def probes(count: int) -> list[int]:
    """The wait numbers of the first ``count`` probes when none of them pays."""
    at, backoff, out = PROBE_EVERY, PROBE_EVERY, []
    for _ in range(count):
        out.append(at)
        backoff = min(2 * backoff, MAX_BACKOFF)
        at += backoff
    return out


def test_probes_that_do_not_pay_back_off_exponentially_up_to_a_cap() -> None:
    assert probes(10) == [8, 24, 56, 120, 248, 504, 1016, 2040, 3064, 4088]


@pytest.mark.parametrize("typical_wait", [BUDGET, 2 * BUDGET, SLOW])
def test_frames_at_or_over_the_budget_poll_only_on_probes(typical_wait: float) -> None:
    # Equal to the budget already counts as "not worth it"; the frames below
    # take exactly the typical wait, so the average stays put, and no probe
    # pays (its frame comes when the budget is spent).
    p, clock = policy(typical_wait=typical_wait)
    polled = polled_waits(p, clock, took=typical_wait, waits=probes(10)[-1])
    assert polled == probes(10)
    assert p.typical_wait == typical_wait
    assert p.backoff == MAX_BACKOFF and not p.contended


def test_a_probe_polls_for_the_full_budget() -> None:
    p, clock = policy(typical_wait=SLOW)
    for _ in range(PROBE_EVERY - 1):
        assert p.begin_wait() == 0.0
        p.frame_arrived()
    assert p.begin_wait() == clock.now + BUDGET


def test_every_wait_counts_towards_the_probe() -> None:
    # Waits that polled (fast frames) and waits that did not count alike: the
    # probe is every 8th wait, not every 8th wait that would not poll.
    p, clock = policy()
    frame(p, clock, FAST)
    frame(p, clock, FAST)
    p.typical_wait = SLOW  # replies turned slow after two waits
    assert polled_waits(p, clock, took=SLOW, waits=PROBE_EVERY) == [PROBE_EVERY]


def test_a_probe_that_pays_brings_the_next_one_back_to_probe_every() -> None:
    p, clock = policy(typical_wait=SLOW)
    assert polled_waits(p, clock, took=SLOW, waits=3 * PROBE_EVERY) == [8, 24]
    assert p.backoff == 4 * PROBE_EVERY and p.next_probe == 56
    # The frame of the next probe comes within the budget (a blocked wait
    # measured only the CPU's wake-up): the probes after it are 8 waits apart.
    p.typical_wait = SLOW
    while p.waits < 55:
        assert not frame(p, clock, took=SLOW)
    assert frame(p, clock, took=PASS)
    assert p.backoff == PROBE_EVERY and p.next_probe == 56 + PROBE_EVERY
    p.typical_wait = SLOW
    assert polled_waits(p, clock, took=SLOW, waits=PROBE_EVERY) == [64]


# --- the measurement ---------------------------------------------------------------------


def test_each_frame_moves_the_average_a_quarter_of_the_way() -> None:
    p, clock = policy(typical_wait=0.0)
    frame(p, clock, took=1.0)
    assert p.typical_wait == SMOOTHING == 0.25
    frame(p, clock, took=1.0)
    assert p.typical_wait == 0.25 + (1.0 - 0.25) * 0.25
    frame(p, clock, took=0.0)
    assert p.typical_wait == (0.25 + 0.75 * 0.25) * 0.75


def test_the_wait_is_measured_from_its_own_start() -> None:
    # Time between waits (handling the frame, the caller's own work) is not
    # part of how long a frame took to come.
    p, clock = policy(typical_wait=0.0)
    clock.now += 100.0  # long before the wait
    p.begin_wait()
    clock.now += 0.5
    p.frame_arrived()
    assert p.typical_wait == 0.5 * SMOOTHING


def test_slow_frames_turn_polling_off_and_fast_ones_back_on() -> None:
    p, clock = policy(typical_wait=0.0)
    # One slow frame (1 s against a 1 ms budget) turns polling off at once.
    assert frame(p, clock, SLOW)
    assert p.typical_wait == 0.25 and not frame(p, clock, FAST)
    # Fast frames shrink the average by a quarter each: from 0.25 it falls
    # under 2**-10 after 20 of them (the one above and 19 more), so the 22nd
    # wait polls again. Before it only the probes (8, 16) did.
    polled = polled_waits(p, clock, took=FAST, waits=30)
    assert polled == [8, 16, *range(22, 33)]
    assert 0.25 * 0.75 ** 20 < BUDGET <= 0.25 * 0.75 ** 19


def test_a_wait_that_never_begun_is_not_measured() -> None:
    # The ends call frame_arrived only after begin_wait; the policy reads the
    # clock once for each and nothing else (the per-call cost on both ends).
    p, clock = policy()
    p.begin_wait()
    assert clock.reads == 1
    p.frame_arrived()
    assert clock.reads == 2
    assert p.waits == 1


def test_repr_shows_the_state() -> None:
    p, clock = policy()
    frame(p, clock, BUDGET)
    assert repr(p) == (f"BusyPollPolicy(budget={BUDGET!r}, typical_wait={BUDGET / 4!r}, "
                       f"waits=1, contended=False, next_probe=8)")


# --- contention ---------------------------------------------------------------------------


def descheduled_wait(p: BusyPollPolicy, clock: FakeClock, lost: float = 0.01) -> bool:
    """A wait during which the end, polling, lost its CPU for ``lost`` seconds
    (a pass of the poll loop took that long); True if it polled."""
    until = p.begin_wait()
    if until:
        clock.now += PASS
        assert p.keep_polling(until)
        clock.now += lost
        assert not p.keep_polling(until)  # stops at once
    clock.now += PASS
    p.frame_arrived()
    return bool(until)


def test_the_limits_of_contention() -> None:
    # A pass takes microseconds; the budget is far more than one lost pass.
    assert PASS < DESCHEDULED < DEFAULT_BUSY_POLL
    assert PROBE_EVERY < MAX_BACKOFF


def test_a_descheduled_pass_stops_polling_at_once_until_a_probe_pays() -> None:
    p, clock = policy()
    assert polled_waits(p, clock, took=PASS * 4, waits=3) == [1, 2, 3]
    assert descheduled_wait(p, clock)  # wait 4 polled and lost its CPU
    assert p.contended and p.deschedules == 1
    # Fast frames (the average is under the budget), yet waits 5-7 block;
    # wait 8 probes, it pays, and polling is back.
    assert polled_waits(p, clock, took=PASS * 4, waits=8) == [8, 9, 10, 11, 12]
    assert not p.contended and p.backoff == PROBE_EVERY and p.deschedules == 1


def test_a_pass_of_exactly_descheduled_is_not_contention() -> None:
    p, clock = policy()
    clock.now = 0.0  # from 0, sums of DESCHEDULED (not a binary fraction) stay exact
    until = p.begin_wait()
    clock.now += DESCHEDULED
    assert clock.now - 0.0 == DESCHEDULED
    assert p.keep_polling(until)
    clock.now += DESCHEDULED
    assert clock.now - DESCHEDULED == DESCHEDULED
    p.frame_arrived()
    assert p.contended is False and p.deschedules == 0
    assert p.begin_wait()


def test_a_long_last_pass_within_the_budget_is_polling_that_paid() -> None:
    # The worker yields its CPU on each pass; when the parent shares that CPU it
    # runs during the yield and writes the frame, which the pass then finds.
    p, clock = policy()
    p.begin_wait()
    clock.now += 2 * DESCHEDULED  # a long last pass, but within the budget: paid
    p.frame_arrived()
    assert not p.contended and p.deschedules == 0 and p.strikes == 0
    assert p.begin_wait()  # still polling


def test_a_long_last_pass_past_the_budget_is_a_lost_cpu() -> None:
    # Another process held the CPU until after the budget: that counts.
    p, clock = policy()
    p.begin_wait()
    clock.now += 0.01  # descheduled between the last look and the one that found it
    p.frame_arrived()
    assert p.contended and p.deschedules == 1
    assert not p.begin_wait()
    p.frame_arrived()
    # Each time it counts: the probe (wait 8) is descheduled the same way.
    while p.waits < PROBE_EVERY - 1:
        frame(p, clock, took=FAST)
    assert p.begin_wait()
    clock.now += 0.01
    p.frame_arrived()
    assert p.contended and p.deschedules == 2


def test_a_short_last_pass_past_the_budget_did_not_pay_and_is_not_contention() -> None:
    p, clock = policy()
    until = p.begin_wait()
    while clock.now + PASS < until:
        clock.now += PASS
        assert p.keep_polling(until)
    clock.now += PASS  # the frame is found by the pass that ends the budget
    p.frame_arrived()
    assert not p.contended and p.deschedules == 0


def test_a_blocked_wait_is_never_contention() -> None:
    # However long an end sleeps, it did not lose a CPU it was polling on.
    p, clock = policy(typical_wait=SLOW)
    for _ in range(PROBE_EVERY - 1):
        assert not descheduled_wait(p, clock, lost=10.0)
    assert not p.contended and p.deschedules == 0


def test_a_poll_that_ran_out_its_budget_is_not_contention() -> None:
    p, clock = policy()
    until = p.begin_wait()
    while p.keep_polling(until):
        clock.now += PASS
    assert clock.now == until  # polled to the end of its budget, no further
    clock.now += 1.0  # then blocked a long time
    p.frame_arrived()
    assert not p.contended and p.deschedules == 0
    assert p.backoff == PROBE_EVERY  # nor was it a probe


def test_under_lasting_contention_only_backed_off_probes_poll() -> None:
    p, clock = policy()
    lost = 2 * DESCHEDULED  # a short loss: the frames stay fast on average
    assert descheduled_wait(p, clock, lost)  # wait 1
    polled = []
    while p.waits < probes(10)[-1]:
        if descheduled_wait(p, clock, lost):
            polled.append(p.waits)
    # Fast frames all along (the average stays under the budget): only the
    # probes polled, each descheduled, each after twice as many waits.
    assert p.typical_wait < BUDGET
    assert polled == probes(10)
    assert p.backoff == MAX_BACKOFF and p.deschedules == 11 and p.contended


def test_a_probe_that_pays_ends_contention_and_resets_the_backoff() -> None:
    p, clock = policy()
    descheduled_wait(p, clock)
    while p.waits < probes(3)[-1]:  # probes 8, 24 and 56 are descheduled too
        descheduled_wait(p, clock)
    assert p.backoff == 8 * PROBE_EVERY and p.next_probe == 56 + 64
    while p.waits < 56 + 63:
        assert not frame(p, clock, took=PASS * 4)
    # The contention is gone: the probe pays, and polling is back for good.
    assert frame(p, clock, took=PASS * 4)
    assert p.contended is False and p.backoff == PROBE_EVERY
    start = p.waits
    assert polled_waits(p, clock, took=PASS * 4, waits=20) == list(range(start + 1,
                                                                        start + 21))
    # The next contention starts from the shortest backoff again.
    descheduled_wait(p, clock)
    assert p.contended and p.next_probe <= p.waits + PROBE_EVERY


def test_a_probe_that_times_out_keeps_the_contention() -> None:
    # A probe that polled its budget out without losing its CPU shows no
    # contention, but no gain either: still off, and the next probe later.
    p, clock = policy()
    descheduled_wait(p, clock)
    while p.waits < PROBE_EVERY - 1:
        frame(p, clock, took=FAST)
    assert frame(p, clock, took=SLOW)  # the probe: no frame within the budget
    assert p.contended and p.backoff == 2 * PROBE_EVERY and p.deschedules == 1
    p.typical_wait = 0.0  # frames fast again: still only probes poll
    assert not frame(p, clock, took=FAST)


# --- import weight -----------------------------------------------------------------------


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ,
                    reason="mutmut's instrumented copy of the module imports typing itself")
def test_the_policy_imports_nothing_heavy() -> None:
    # The worker imports this module at start-up (spawn-to-hello is benchmarked).
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import engine.busy_poll\n"
        "new = sorted(m for m in set(sys.modules) - before if not m.startswith('engine'))\n"
        "heavy = [m for m in new if m.split('.')[0] in ('typing', 'trio', 'attrs', 'attr')]\n"
        "assert not heavy, f'engine.busy_poll imported {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_policy_is_slotted() -> None:
    p: Any = BusyPollPolicy(BUDGET)
    with pytest.raises(AttributeError):
        p.typo = 1


# --- strikes: one lost poll on a quiet machine is not contention ---------------------------

HICCUP = 2 * DESCHEDULED  # a short loss: the frames stay fast on average


def test_by_default_two_lost_polls_in_a_row_mean_contention() -> None:
    assert STRIKES == 2 and BusyPollPolicy(BUDGET).strikes_to_contend == STRIKES
    p, clock = policy(strikes=STRIKES)
    assert descheduled_wait(p, clock, HICCUP)  # a hiccup: this poll ends...
    assert not p.contended and p.deschedules == 1 and p.strikes == 1
    assert descheduled_wait(p, clock, HICCUP)  # ...the next wait polls, and loses its CPU too
    assert p.contended and p.deschedules == 2
    assert not p.begin_wait()  # now off until a probe pays


def test_a_poll_that_pays_between_two_lost_ones_resets_the_strikes() -> None:
    p, clock = policy(strikes=STRIKES)
    descheduled_wait(p, clock, HICCUP)
    assert frame(p, clock, took=PASS * 4)  # polled and paid
    assert p.strikes == 0
    descheduled_wait(p, clock, HICCUP)
    assert not p.contended and p.strikes == 1
    assert frame(p, clock, took=PASS * 4)  # still polling: one strike is no contention


def test_under_lasting_contention_the_default_stops_after_its_strikes() -> None:
    p, clock = policy(strikes=STRIKES)
    polled = [w for w in range(1, 8) if descheduled_wait(p, clock, lost=HICCUP)]
    assert polled == [1, 2]  # two lost polls, then blocked until the probe (wait 8)
    assert p.contended and p.deschedules == 2


def test_the_edges_of_a_lost_last_pass() -> None:
    # Exactly DESCHEDULED is not a lost CPU, even with the wait at its budget...
    p, clock = policy(budget=DESCHEDULED)
    clock.now = 0.0  # from 0 the differences below are exact
    p.begin_wait()
    clock.now += DESCHEDULED
    p.frame_arrived()
    assert p.deschedules == 0
    # ...and a wait of exactly its budget, after a long last pass, is one.
    p, clock = policy()
    clock.now = 0.0
    p.begin_wait()
    clock.now += BUDGET
    p.frame_arrived()
    assert p.deschedules == 1
