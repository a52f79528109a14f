"""The Trio pipe echo with the engine's framing: issue 3's floor, now a yardstick.

The child reads length-prefixed frames from stdin with blocking reads and
writes each one straight back, without decoding it. The parent encodes with
:func:`engine.protocol.encode_frame` and decodes with
:class:`engine.protocol.FrameDecoder` over Trio's pipe streams, sleeping in
epoll for every reply. Both ends sleep, so every call pays an idle CPU's
wake-up twice; the busy-polling pool beats it, which is why the reference row
is now the spin floor (:mod:`bench.spin`), where neither end sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine.protocol import FrameDecoder, encode_frame

# The child's frame loop. REPLY(n) turns the frame in buf[:4 + n] into the
# bytes sent back; each child below defines it.
_CHILD_LOOP = r"""
buf = bytearray()
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buf += chunk
    while len(buf) >= 4:
        (n,) = struct.unpack_from(">I", buf)
        if len(buf) < 4 + n:
            break
        reply = REPLY(n)
        del buf[:4 + n]
        view = memoryview(reply)
        while view:
            view = view[os.write(1, view):]
"""

# The floor: each frame straight back, undecoded.
CHILD = r"""
import os, struct

def REPLY(n):
    return bytes(buf[:4 + n])
""" + _CHILD_LOOP

# The same, plus the JSON work any JSON-framed worker must do: decode the
# request and encode a response. Not a target, a yardstick: it shows how much
# of the gap to the floor is JSON and how much is the runtime and the channel.
CHILD_JSON = r"""
import os, struct, json
decode = json.JSONDecoder().decode
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

def REPLY(n):
    request = decode(bytes(buf[4:4 + n]).decode("utf-8"))
    body = encode({"id": request["id"], "ok": True, "result": request["args"]}).encode()
    return struct.pack(">I", len(body)) + body
""" + _CHILD_LOOP


class FloorEcho:
    """Parent side of the floor: one request, one echoed frame, decoded."""

    def __init__(self, process: trio.Process, key: str = "args") -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._send = process.stdin
        self._receive = process.stdout
        self._decoder = FrameDecoder()
        self._ids = 0
        self._key = key  # the echoed request holds "args"; a JSON reply, "result"

    async def call(self, command: str, args: Any = None) -> Any:
        self._ids += 1
        frame = encode_frame({"id": self._ids, "command": command, "args": args,
                              "session": None})
        await self._send.send_all(frame)
        while True:
            message = self._decoder.next_message()
            if message is not None:
                return message[self._key]
            data = await self._receive.receive_some(65536)
            if not data:
                raise RuntimeError("floor echo child exited")
            self._decoder.feed(data)


@asynccontextmanager
async def open_floor(json_child: bool = False) -> AsyncIterator[FloorEcho]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD_JSON if json_child else CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield FloorEcho(process, "result" if json_child else "args")
    finally:
        with trio.CancelScope(shield=True):
            assert process.stdin is not None
            await process.stdin.aclose()
            await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()
