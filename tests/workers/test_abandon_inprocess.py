"""The runtime's handling of abandon frames, in this process (layer 1).

A :class:`~engine.workers.runtime.Worker` serves a pipe we write requests to
and answers on another pipe we read back; no subprocess. The same behaviour
as a real process is checked in tests/workers/test_abandon.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine.protocol import (
    ABANDON_SIGNAL,
    CANCELLED,
    FrameDecoder,
    abandon_message,
    encode_frame,
    make_request,
    parse_response,
)
from engine.workers import runtime
from engine.workers.app import App, Context

pytestmark = pytest.mark.layer1


class Served:
    """A worker of ``app`` over two pipes; :meth:`serve` runs it until stdin EOF."""

    def __init__(self, app: App) -> None:
        self.stdin_read, self.stdin_write = os.pipe()
        self.out_read, out_write = os.pipe()
        self.channel = runtime.Channel(out_write)
        self.worker = runtime.Worker(app, "ip", self.channel, stdin_fd=self.stdin_read)

    def write(self, *messages: dict[str, Any]) -> None:
        os.write(self.stdin_write, b"".join(encode_frame(m) for m in messages))

    def serve(self, *, close_stdin: bool = True) -> list[Any]:
        """Serve everything (until EOF, or shutdown); return the responses in order."""
        if close_stdin:
            os.close(self.stdin_write)
            self.stdin_write = -1
        assert self.worker.serve() == runtime.EXIT_OK
        os.close(self.channel.fd)
        self.channel.fd = -1
        decoder = FrameDecoder()
        while data := os.read(self.out_read, 65536):
            decoder.feed(data)
        return [parse_response(m) for m in decoder.messages()]

    def close(self) -> None:
        for fd in (self.stdin_read, self.stdin_write, self.out_read, self.channel.fd):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def ran() -> list[int]:
    return []


@pytest.fixture
def served(ran: list[int]) -> Iterator[Served]:
    app = App("inprocess")

    def mark(args: Any, ctx: Context) -> int:
        ran.append(ctx.request_id)
        return ctx.request_id

    app.add_command("mark", mark)
    s = Served(app)
    yield s
    s.close()


def test_a_request_abandoned_behind_it_is_answered_without_running(
        served: Served, ran: list[int]) -> None:
    served.write(make_request(1, "mark"), abandon_message(1), make_request(2, "mark"),
                 abandon_message(2))
    first, second = served.serve()
    assert (first.id, first.ok, first.error and first.error.type) == (1, False, CANCELLED)
    assert first.error is not None and "before its handler started" in first.error.message
    assert (second.id, second.ok) == (2, False)
    assert ran == []  # neither handler ran
    assert served.worker.cancelled == 2 and served.worker.requests == 2


def test_an_abandon_for_an_answered_or_unknown_request_is_ignored(
        served: Served, ran: list[int]) -> None:
    served.write(make_request(1, "mark"), make_request(2, "shutdown"))
    assert served.worker.serve() == runtime.EXIT_OK  # request 1 answered
    served.worker.stopping = False
    served.write(abandon_message(1), abandon_message(99), make_request(3, "mark"))
    replies = served.serve()
    assert [(r.id, r.ok, r.result) for r in replies] == \
        [(1, True, 1), (2, True, {"shutting_down": True}), (3, True, 3)]
    assert ran == [1, 3] and served.worker.cancelled == 0


def test_the_signal_interrupts_the_running_handler() -> None:
    """The handler plays the parent: it writes the abandon frame on its own
    worker's stdin and signals this process, then sleeps; the sleep is cut
    short and the request answered Cancelled; the next one runs."""
    app = App("interrupted")
    served = Served(app)
    cleaned: list[bool] = []

    def wait(args: Any, ctx: Context) -> Any:
        try:
            os.write(served.stdin_write, encode_frame(abandon_message(ctx.request_id)))
            os.kill(os.getpid(), ABANDON_SIGNAL)  # the interrupt may come right here
            time.sleep(30)  # the test's time limit would end a missed interrupt
        finally:
            cleaned.append(True)
        return "not interrupted"

    app.add_command("wait", wait)
    served.worker = runtime.Worker(app, "ip", served.channel, stdin_fd=served.stdin_read)
    previous = signal.getsignal(ABANDON_SIGNAL)
    try:
        served.worker.install_abandon_handler()
        served.write(make_request(1, "wait"))
        # Queued behind: served once the first is answered (from the decoder
        # the signal handler fed, or from the pipe).
        served.write(make_request(2, "shutdown"))
        replies = served.serve(close_stdin=False)
    finally:
        signal.signal(ABANDON_SIGNAL, previous)
        served.close()
    assert [r.id for r in replies] == [1, 2]
    assert replies[0].error is not None and replies[0].error.type == CANCELLED
    assert "interrupted" in replies[0].error.message
    assert replies[1].ok and cleaned == [True]
