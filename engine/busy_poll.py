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

# Every PROBE_EVERY-th wait polls even when the measurements say no: a frame
# waited for while blocked includes the CPU's wake-up latency, so without these
# probes an end once idle would never measure its way back to polling.
PROBE_EVERY = 8
# Weight of the newest measurement in the moving average of waits.
SMOOTHING = 0.25
# A pass of a poll loop (one look at the fd, one trip through the scheduler or
# one sched_yield) takes a few microseconds. One that took longer than this
# means the end lost its CPU for a while: other runnable work holds the cores
# (or, in the parent, other tasks held the thread). Polling then pays nothing:
# a spinning end is runnable, so when its frame comes it waits for its next
# turn on the CPU, while a blocked end is woken and usually runs at once.
DESCHEDULED = 50e-6
# After a descheduled poll an end stays off for BACKOFF waits (no probes), then
# polls once to see whether it pays again; each probe that is descheduled too
# doubles the wait before the next one, up to MAX_BACKOFF.
BACKOFF = PROBE_EVERY
MAX_BACKOFF = 1024
_FOREVER = float("inf")


class BusyPollPolicy:
    """How long one end of a pipe should poll before it blocks for the next frame.

    An end calls :meth:`begin_wait` when the frame it needs is not there yet;
    if that returns a deadline, it polls while :meth:`keep_polling` says so,
    then blocks; and it calls :meth:`frame_arrived` when the frame is read.

    Two signals turn polling off:

    * *slow frames*: the policy keeps a moving average of how long frames took
      to come (``typical_wait``) and says "poll" while it is under the budget,
      and on every :data:`PROBE_EVERY`-th wait (a probe);
    * *contention*: a pass of the poll loop that took longer than
      :data:`DESCHEDULED` (the end was descheduled: the cores are busy with
      other work). Polling stops at once and stays off for ``backoff`` waits,
      probes included; then one wait polls again (the re-probe). A re-probe
      descheduled too doubles ``backoff`` (up to :data:`MAX_BACKOFF`); one that
      is not resets it to :data:`BACKOFF`.

    These methods are the one place that decides and the one place that
    measures. They run on every call on both ends, so they are kept to a few
    attribute reads and writes, and one clock read each.

    Without a policy an end never polls: a budget of 0 ("off") is spelled by
    having none, and a policy's budget must be above 0.
    """

    __slots__ = ("_last", "_polling", "_started", "backoff", "budget", "clock", "contended",
                 "off_until", "typical_wait", "waits")

    def __init__(self, budget: float, *, typical_wait: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``budget``: the longest poll, in seconds, above 0 (``PoolConfig`` and
        the worker's command line cap it at :data:`MAX_BUSY_POLL`).
        ``typical_wait``: the average to start from (0: the first wait polls;
        ``budget``: it does not, nothing being known yet). ``clock``: seconds,
        increasing, positive (``time.perf_counter``; tests pass a fake)."""
        if not 0 < budget < _FOREVER:
            raise ValueError(f"a busy-poll budget must be a number of seconds above 0, got "
                             f"{budget!r}; to turn polling off, use no policy")
        self.budget = budget
        self.typical_wait = typical_wait
        self.clock = clock
        self.waits = 0  # waits begun (probes are counted on it)
        self.contended = 0  # descheduled polls seen (for the curious: tests, benches)
        self.backoff = BACKOFF  # waits to stay off after the next descheduled poll
        self.off_until = 0  # while waits < this, never poll (contention)
        self._started = 0.0  # clock reading when the current wait began
        self._last = 0.0  # clock reading at the latest pass of the current poll
        self._polling = False  # the current wait is polling

    def begin_wait(self) -> float:
        """A wait for a frame begins: poll until the returned clock time (while
        :meth:`keep_polling` agrees), or block at once when it is 0.0."""
        self._started = self._last = now = self.clock()
        self.waits = waits = self.waits + 1
        if waits < self.off_until:
            self._polling = False
            return 0.0
        if waits == self.off_until or self.typical_wait < self.budget \
                or not waits % PROBE_EVERY:
            self._polling = True
            return now + self.budget
        self._polling = False
        return 0.0

    def keep_polling(self, until: float) -> bool:
        """One more pass of the poll loop, before the deadline ``until`` that
        :meth:`begin_wait` gave? False: block now."""
        now = self.clock()
        if now - self._last > DESCHEDULED:
            self._descheduled()
            return False
        self._last = now
        if now < until:
            return True
        self._polling = False
        return False

    def frame_arrived(self) -> None:
        """The frame waited for came: fold how long it took into the average."""
        now = self.clock()
        if self._polling:
            self._polling = False
            if now - self._last > DESCHEDULED:
                # Descheduled during the last pass, the one that found the frame.
                self._descheduled()
            elif self.waits == self.off_until:
                self.backoff = BACKOFF  # the re-probe paid: contention is over
        self.typical_wait += (now - self._started - self.typical_wait) * SMOOTHING

    def _descheduled(self) -> None:
        self._polling = False
        self.contended += 1
        if self.waits == self.off_until:  # the re-probe was descheduled too
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self.off_until = self.waits + self.backoff

    def __repr__(self) -> str:
        return (f"BusyPollPolicy(budget={self.budget!r}, typical_wait={self.typical_wait!r}, "
                f"waits={self.waits}, contended={self.contended}, "
                f"off_until={self.off_until})")
