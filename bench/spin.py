"""The spin floor: a framed pipe round trip where both ends spin.

This is the practical limit of a pipe-and-JSON worker in Python. The child
reads its stdin without blocking, in a loop, JSON-decodes each request and
JSON-encodes a response (as every JSON worker must), and writes it back with the
engine's 4-byte length framing. The parent is plain Python, no Trio: it writes
the request frame and calls ``os.read`` on the non-blocking pipe in a loop until
the reply frame is complete. Both ends use the engine's own codec
(:func:`engine.protocol.encode_frame`, :func:`engine.protocol.decode_body`,
faster than ``json.dumps``/``loads`` with their defaults), so the floor does
exactly the JSON work a worker call must do and nothing else. Neither end ever
sleeps while a call is in flight, so no CPU wake-up latency is paid.

:meth:`SpinEcho.call_through_trio` is the same parent, except that between two
reads it takes one pass through Trio's scheduler (``checkpoint()``), as a Trio
task that polls must (``engine.process.transport.PipeTransport`` does that):
the breakdown row that prices the scheduler.

The child stops spinning once no frame came for :data:`CHILD_SPIN` seconds and
sleeps in ``poll()`` until the next: the contenders take turns in rounds, and a
child that span while the others are measured would be a CPU hog to them. It
answers the command ``cpu`` with its own CPU time (:meth:`SpinEcho.child_cpu`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

import engine.protocol
from engine.protocol import HEADER_SIZE, FrameDecoder, decode_body, encode_frame

CHILD_SPIN = 0.002  # seconds; far longer than any gap between two calls of a round
REPLY_TIMEOUT = 10.0  # a wedged child fails the bench rather than hanging it
_PENDING: Any = object()  # no complete reply frame yet

CHILD = r"""
import os, select, sys, time
from engine.protocol import HEADER_SIZE, decode_body, encode_frame
spin = float(sys.argv[1])
os.set_blocking(0, False)
poller = select.poll()
poller.register(0, select.POLLIN)
clock = time.perf_counter
buf = bytearray()
last = clock()
while True:
    try:
        chunk = os.read(0, 65536)
    except BlockingIOError:
        if clock() - last > spin:
            poller.poll()
            last = clock()
        continue
    if not chunk:
        break
    buf += chunk
    while len(buf) >= HEADER_SIZE:
        n = int.from_bytes(buf[:HEADER_SIZE], "big")
        if len(buf) < HEADER_SIZE + n:
            break
        request = decode_body(bytes(buf[HEADER_SIZE:HEADER_SIZE + n]))
        del buf[:HEADER_SIZE + n]
        result = request["args"] if request["command"] != "cpu" else time.process_time()
        reply = memoryview(encode_frame({"id": request["id"], "ok": True, "result": result}))
        while reply:
            reply = reply[os.write(1, reply):]
    last = clock()
"""


class SpinEcho:
    """Parent side of the spin floor (see the module docstring)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._write_fd = process.stdin.fileno()
        self._read_fd = process.stdout.fileno()
        os.set_blocking(self._read_fd, False)
        self._decoder = FrameDecoder()
        self._ids = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def child_cpu(self) -> float:
        """The child's CPU seconds so far, as it reads them itself.

        Read from outside (``/proc``), a process that never sleeps or yields has
        its CPU time brought up to date only at scheduler ticks (4 ms here),
        longer than a round of calls; its own ``process_time()`` is exact.
        """
        cpu: float = self.call("cpu")
        return cpu

    def _send(self, command: str, args: Any) -> None:
        self._ids += 1
        frame = encode_frame({"id": self._ids, "command": command, "args": args,
                              "session": None})
        view = memoryview(frame)
        while view:  # the write end blocks: a small frame goes in one write
            view = view[os.write(self._write_fd, view):]

    def _feed(self, data: bytes) -> Any:
        if not data:
            raise RuntimeError("spin floor child exited")
        decoder = self._decoder
        if not decoder.buffered and len(data) > HEADER_SIZE \
                and int.from_bytes(data[:HEADER_SIZE], "big") == len(data) - HEADER_SIZE:
            return decode_body(data[HEADER_SIZE:])["result"]  # one read, one whole frame
        decoder.feed(data)
        message = decoder.next_message()
        return _PENDING if message is None else message["result"]

    def call(self, command: str, args: Any = None) -> Any:
        """One round trip, spinning on the reply without Trio."""
        self._send(command, args)
        read, fd, clock = os.read, self._read_fd, time.perf_counter
        give_up = clock() + REPLY_TIMEOUT
        while True:
            try:
                data = read(fd, 65536)
            except BlockingIOError:
                if clock() > give_up:
                    raise RuntimeError("spin floor child did not answer") from None
                continue
            result = self._feed(data)
            if result is not _PENDING:
                return result

    async def acall(self, command: str, args: Any = None) -> Any:
        """:meth:`call` as a coroutine (no checkpoint: it never yields to Trio)."""
        return self.call(command, args)

    async def call_through_trio(self, command: str, args: Any = None) -> Any:
        """One round trip, spinning through Trio's scheduler between reads."""
        self._send(command, args)
        read, fd, clock = os.read, self._read_fd, time.perf_counter
        give_up = clock() + REPLY_TIMEOUT
        while True:
            try:
                data = read(fd, 65536)
            except BlockingIOError:
                if clock() > give_up:
                    raise RuntimeError("spin floor child did not answer") from None
                await trio.lowlevel.checkpoint()
                continue
            result = self._feed(data)
            if result is not _PENDING:
                return result


@contextmanager
def open_spin_floor() -> Iterator[SpinEcho]:
    """Start the spinning child; on exit close its stdin and wait for it."""
    # The child imports this very engine's codec, as a worker does.
    root = str(Path(engine.protocol.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(CHILD_SPIN)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": path})
    try:
        yield SpinEcho(process)
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
