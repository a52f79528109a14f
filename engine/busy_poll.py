"""When to busy-poll for the next frame instead of sleeping: one rule for both ends.

Both ends of a worker's pipe wait for frames: the parent for replies, the worker
for requests. Blocking lets the CPU idle, and an idle vCPU takes 50-100 µs to
wake when the frame comes, more than a whole small call. So each end first
polls for up to a *budget* (``PoolConfig.busy_poll``), but only while polling
pays: while frames usually come within the budget. :class:`BusyPollPolicy`
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
_FOREVER = float("inf")


class BusyPollPolicy:
    """How long one end of a pipe should poll before it blocks for the next frame.

    An end calls :meth:`begin_wait` when the frame it needs is not there yet,
    polls until the time it returns (if any), then blocks; and it calls
    :meth:`frame_arrived` when the frame is read. The policy keeps a moving
    average of how long frames took to come (``typical_wait``) and says "poll"
    while it is under the budget, and on every :data:`PROBE_EVERY`-th wait.

    Those two methods are the one place that decides and the one place that
    measures: a smarter rule (say, stop polling at once when a contended CPU
    makes it pay nothing) changes them alone. They run on every call on both
    ends, so they are kept to a few attribute reads and writes.

    Without a policy an end never polls: a budget of 0 ("off") is spelled by
    having none, and a policy's budget must be above 0.
    """

    __slots__ = ("_started", "budget", "clock", "typical_wait", "waits")

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
        self._started = 0.0  # clock reading when the current wait began

    def begin_wait(self) -> float:
        """A wait for a frame begins: poll until the returned clock time, or
        block at once when it is 0.0."""
        self._started = now = self.clock()
        self.waits = waits = self.waits + 1
        if self.typical_wait < self.budget or not waits % PROBE_EVERY:
            return now + self.budget
        return 0.0

    def frame_arrived(self) -> None:
        """The frame waited for came: fold how long it took into the average."""
        self.typical_wait += (self.clock() - self._started - self.typical_wait) * SMOOTHING

    def __repr__(self) -> str:
        return (f"BusyPollPolicy(budget={self.budget!r}, typical_wait={self.typical_wait!r}, "
                f"waits={self.waits})")
