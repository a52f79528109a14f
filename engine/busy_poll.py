"""When to busy-poll for the next frame instead of sleeping: one rule for both ends.

Both ends of a worker's pipe wait for frames: the parent for replies, the worker
for requests. Blocking lets the CPU idle, and an idle vCPU takes 50-100 µs to
wake when the frame comes, more than a whole small call. So each end first
polls for up to a *budget* (``PoolConfig.busy_poll``), but only while polling
pays: while frames usually come within the budget and the end keeps its CPU
while it polls (on a machine whose cores are busy with other work, a polling
end loses its turn and blocking is faster). :class:`BusyPollPolicy`
decides that, and only that; each end keeps its own mechanics (the parent
spins through Trio's scheduler, the worker polls stdin and yields its CPU).

Pure: no I/O, no Trio, standard library only (the worker imports it, and its
start-up time is benchmarked: ``typing`` is not imported at runtime).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable

# Busy-polling budget (seconds) of both ends of a worker's pipe; see
# PoolConfig.busy_poll. The cap keeps a misconfiguration from burning a core;
# the worker's command line carries it in whole microseconds.
DEFAULT_BUSY_POLL = 100e-6
MAX_BUSY_POLL_US = 10_000
MAX_BUSY_POLL = MAX_BUSY_POLL_US / 1_000_000

# Probes: a wait polls when the measurements say no, to see whether polling
# pays again (a frame waited for while blocked includes the CPU's wake-up
# latency, so without probes an end once idle would never measure its way back
# to polling). The first comes PROBE_EVERY waits after the last probe that paid;
# each probe that does not pay (its frame did not come within the budget, or
# the end lost its CPU) doubles the waits before the next, up to MAX_BACKOFF:
# under lasting contention or sparse frames, probing costs next to nothing.
PROBE_EVERY = 8
MAX_BACKOFF = 1024
# Weight of the newest measurement in the moving average of waits.
SMOOTHING = 0.25
# A pass of a poll loop (one look at the fd, one trip through the scheduler or
# one sched_yield) takes a few microseconds. One that took longer than this
# means the end lost its CPU for a while: other runnable work holds the cores
# (or, in the parent, other tasks held the thread). Polling then pays nothing:
# a spinning end is runnable, so when its frame comes it waits for its next
# turn on the CPU, while a blocked end is woken and usually runs at once.
DESCHEDULED = 50e-6
# A quiet VM loses its CPU for 50-500 µs about a hundred times a second of
# spinning (timer ticks, the hypervisor), so one lost pass proves nothing: it
# ends that poll, but the end is taken as contended only when the poll of the
# wait before was cut short the same way (STRIKES lost polls in a row, reset
# by a poll that pays). Under real contention every poll loses its CPU, so
# this costs one more lost poll. With a single strike, quiet-machine latency
# rose by half (pool.call 36 -> 51 µs, raw worker 19 -> 29 µs, one bench run).
STRIKES = 2
_FOREVER = float("inf")

# What the current wait is doing (BusyPollPolicy._mode).
_BLOCKING = 0  # not polling (never did, or stopped)
_POLLING = 1  # polling because frames come within the budget
_PROBING = 2  # polling to see whether it pays again


class BusyPollPolicy:
    """How long one end of a pipe should poll before it blocks for the next frame.

    An end calls :meth:`begin_wait` when the frame it needs is not there yet;
    if that returns a deadline, it polls while :meth:`keep_polling` says so,
    then blocks; and it calls :meth:`frame_arrived` when the frame is read.

    Polling stops on two signals:

    * *slow frames*: the policy keeps a moving average of how long frames took
      to come (``typical_wait``) and polls while it is under the budget;
    * *contention*: a pass of the poll loop that took longer than
      :data:`DESCHEDULED` (the end was descheduled: the cores are busy with
      other work). Polling stops at once, and ``contended`` holds it off
      whatever the average says, until a probe pays.

    Otherwise only probes poll (see :data:`PROBE_EVERY`): wait number
    ``next_probe``, then ``backoff`` waits later (doubled after each probe that
    did not pay, back to :data:`PROBE_EVERY` after one that did).

    These methods are the one place that decides and the one place that
    measures. They run on every call on both ends, so they are kept to a few
    attribute reads and writes, and one clock read each.

    Without a policy an end never polls: a budget of 0 ("off") is spelled by
    having none, and a policy's budget must be above 0.
    """

    __slots__ = ("_last", "_mode", "_started", "backoff", "budget", "clock", "contended",
                 "deschedules", "next_probe", "strikes", "strikes_to_contend", "typical_wait",
                 "waits")

    def __init__(self, budget: float, *, typical_wait: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter,
                 strikes_to_contend: int = STRIKES) -> None:
        """``budget``: the longest poll, in seconds, above 0 (``PoolConfig`` and
        the worker's command line cap it at :data:`MAX_BUSY_POLL`).
        ``typical_wait``: the average to start from (0: the first wait polls;
        ``budget``: it does not, nothing being known yet). ``clock``: seconds,
        increasing, positive (``time.perf_counter``; tests pass a fake).
        ``strikes_to_contend``: lost polls in a row that mean contention
        (:data:`STRIKES`)."""
        if not 0 < budget < _FOREVER:
            raise ValueError(f"a busy-poll budget must be a number of seconds above 0, got "
                             f"{budget!r}; to turn polling off, use no policy")
        self.budget = budget
        self.typical_wait = typical_wait
        self.clock = clock
        self.waits = 0  # waits begun
        self.backoff = PROBE_EVERY  # waits from a probe that did not pay to the next
        self.next_probe = PROBE_EVERY  # the wait number of the next probe
        self.contended = False  # lost the CPU while polling; no probe paid since
        self.deschedules = 0  # polls that lost the CPU (for tests and the curious)
        self.strikes = 0  # polls in a row that lost the CPU
        self.strikes_to_contend = strikes_to_contend
        self._started = 0.0  # clock reading when the current wait began
        self._last = 0.0  # clock reading at the latest pass of the current poll
        self._mode = _BLOCKING

    def begin_wait(self) -> float:
        """A wait for a frame begins: poll until the returned clock time (while
        :meth:`keep_polling` agrees), or block at once when it is 0.0."""
        self._started = self._last = now = self.clock()
        self.waits = waits = self.waits + 1
        if waits >= self.next_probe:
            self._mode = _PROBING
        elif self.typical_wait < self.budget and not self.contended:
            self._mode = _POLLING
        else:
            self._mode = _BLOCKING
            return 0.0
        return now + self.budget

    def keep_polling(self, until: float) -> bool:
        """One more pass of the poll loop, before the deadline ``until`` that
        :meth:`begin_wait` gave? False: block now."""
        now = self.clock()
        if now - self._last > DESCHEDULED:
            self._lost_cpu()
            return False
        self._last = now
        if now < until:
            return True
        self._stop()  # the budget is spent: the frame did not come in time
        return False

    def frame_arrived(self) -> None:
        """The frame waited for came: fold how long it took into the average."""
        now = self.clock()
        waited = now - self._started
        if self._mode:  # it came while polling
            if now - self._last > DESCHEDULED and waited >= self.budget:
                # Descheduled during the last pass, the one that found the
                # frame, and the wait ran past the budget: another process held
                # the CPU. (A long last pass within the budget is polling that
                # paid: the worker yields its CPU on each pass, and when the
                # parent shares that CPU it runs during the yield and writes
                # the frame. Counting that as lost made the worker stop polling
                # on a quiet machine: pool.call 32 -> 51 us.)
                self._lost_cpu()
            elif waited < self.budget:  # polling paid
                if self._mode == _PROBING:  # probe soon again
                    self.backoff = PROBE_EVERY
                    self.next_probe = self.waits + PROBE_EVERY
                self.contended = False
                self.strikes = 0
                self._mode = _BLOCKING
            else:  # came as the budget ran out: no gain
                self._stop()
        self.typical_wait += (waited - self.typical_wait) * SMOOTHING

    def _lost_cpu(self) -> None:
        """The current poll lost its CPU: it ends, and STRIKES of those in a
        row mean contention."""
        self.deschedules += 1
        self.strikes += 1
        if self.strikes >= self.strikes_to_contend:
            self.contended = True
        self._stop()

    def _stop(self) -> None:
        """The current poll ends without paying."""
        if self._mode == _PROBING:
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            self.next_probe = self.waits + self.backoff
        self._mode = _BLOCKING

    def __repr__(self) -> str:
        return (f"BusyPollPolicy(budget={self.budget!r}, typical_wait={self.typical_wait!r}, "
                f"waits={self.waits}, contended={self.contended}, "
                f"next_probe={self.next_probe})")
