"""Where the lines a worker prints go (``PoolConfig.worker_output``).

A worker's stdout is its stderr (fd 1 carries frames, see the runtime), and the
parent reads that pipe line by line. Every line is kept in the worker's stderr
tail for crash reports; besides that it is

* ``"forward"`` (the default): written to this process's ``sys.stderr`` as
  ``[pool1-0.1] the line``, where a user looks;
* ``"log"``: logged at INFO on the ``engine.worker`` logger (with ``worker_id``
  in the record's extras);
* ``"discard"``: dropped.

Forwarding never blocks the event loop: lines go into a bounded buffer that a
thread writes out, so a slow or full stderr (a pipe nobody reads) costs the
pool nothing. When the buffer is full, lines are dropped and counted, and the
count is written once the writer catches up. Pending lines are written at
interpreter exit (for up to a second).
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import trio

__all__ = ["FORWARDER", "WORKER_OUTPUT_MODES", "StderrForwarder", "line_sink"]

WORKER_OUTPUT_MODES = ("forward", "log", "discard")

logger = logging.getLogger("engine.worker")

# How much forwarded text may wait for a slow stderr before lines are dropped.
_MAX_PENDING_CHARS = 1 << 20
_EXIT_FLUSH_TIMEOUT = 1.0


class StderrForwarder:
    """A bounded buffer of text for ``sys.stderr``, written out by a thread.

    :meth:`submit` never blocks: it appends under a lock that the writer holds
    only to take a batch, never while writing. The writer runs in one of
    Trio's cached threads while there is text, and returns it when idle.
    ``stream`` picks the stream at each write (default: the current
    ``sys.stderr``, so a redirection made later is honoured).
    """

    def __init__(self, max_pending_chars: int = _MAX_PENDING_CHARS,
                 stream: Callable[[], TextIO | None] = lambda: sys.stderr) -> None:
        self._max_pending = max_pending_chars
        self._stream = stream
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: collections.deque[str] = collections.deque()
        self._pending_chars = 0
        self._dropped = 0
        self._writing = False
        self._exit_hook = False
        self.lines_dropped = 0  # in total, for tests and curious users

    def submit(self, text: str) -> None:
        """Queue ``text`` (whole lines) for writing, or count it as dropped."""
        with self._lock:
            if self._pending_chars + len(text) > self._max_pending:
                self._dropped += 1
                self.lines_dropped += 1
                return
            self._pending.append(text)
            self._pending_chars += len(text)
            if self._writing:
                return
            self._writing = True
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self.flush, _EXIT_FLUSH_TIMEOUT)
        trio.lowlevel.start_thread_soon(self._write_pending, _report_writer_failure)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written; False on timeout.

        For scripts and tests (a Trio program calls it through
        ``trio.to_thread.run_sync``); runs at interpreter exit too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._writing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _write_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending and not self._dropped:
                    self._writing = False
                    self._idle.notify_all()
                    return
                text = "".join(self._pending)
                self._pending.clear()
                self._pending_chars = 0
                dropped, self._dropped = self._dropped, 0
            if dropped:
                # Everything queued before the drops is in ``text``: the notice
                # stands where the lines went missing.
                text += (f"[engine] {dropped} line{'s' if dropped > 1 else ''} of worker "
                         "output dropped: stderr was not keeping up\n")
            stream = self._stream()
            if stream is None:
                continue  # no stderr at all (pythonw): nothing to write to
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or broken: the lines are lost, the pool goes on


def _report_writer_failure(outcome: Any) -> None:
    # The writer catches what writing can raise; anything else is a bug, and a
    # bug must not pass silently.
    try:
        outcome.unwrap()
    except BaseException:
        logger.exception("the worker output forwarder failed")


FORWARDER = StderrForwarder()
"""The process's one forwarder: workers of every pool write through it, in order."""


def line_sink(mode: str, worker_id: str) -> Callable[[str], None] | None:
    """What to do with each line of ``worker_id``'s output; None to keep none."""
    if mode == "forward":
        prefix, submit = f"[{worker_id}] ", FORWARDER.submit
        return lambda line: submit(f"{prefix}{line}\n")
    if mode == "log":
        extra = {"worker_id": worker_id}
        return lambda line: logger.info("[%s] %s", worker_id, line, extra=extra)
    if mode == "discard":
        return None
    raise ValueError(f"worker_output must be one of {', '.join(WORKER_OUTPUT_MODES)}, "
                     f"got {mode!r}")
