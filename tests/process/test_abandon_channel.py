"""The parent channel's side of abandoned requests, over real pipes (layer 2).

The test plays the worker: it reads the request pipe and writes replies, so
every byte the channel sends after a cancel can be checked: the rest of a
request cut short mid-write, then the abandon frame, and nothing before the
drain is over.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine.errors import CallTimeout
from engine.process.channel import DrainFailed, FramedChannel
from engine.protocol import CANCELLED, FrameDecoder, encode_frame, error_response, ok_response

pytestmark = pytest.mark.layer2

BIG = "x" * 300_000  # far more than a pipe holds (64 KiB): its write blocks half-way


@attrs.define
class FakeEnd:
    """The worker's ends of the two pipes."""

    requests: trio.lowlevel.FdStream
    replies: trio.lowlevel.FdStream
    parent_fd: int  # the channel's end of the request pipe
    decoder: FrameDecoder = attrs.Factory(lambda: FrameDecoder(1 << 24))

    async def message(self) -> dict[str, Any]:
        while (message := self.decoder.next_message()) is None:
            data = await self.requests.receive_some(65536)
            assert data, "the channel closed the request pipe"
            self.decoder.feed(data)
        return message

    async def reply(self, message: dict[str, Any]) -> None:
        await self.replies.send_all(encode_frame(message))


@asynccontextmanager
async def channel_and_worker(**options: Any) -> AsyncIterator[tuple[FramedChannel, FakeEnd,
                                                                     list[str]]]:
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    nudges: list[str] = []
    channel = FramedChannel(trio.lowlevel.FdStream(request_w), trio.lowlevel.FdStream(reply_r),
                            worker_id="w", max_frame_size=1 << 24,
                            nudge=lambda: nudges.append("nudged"),
                            **{"cancel_grace": 5.0, **options})
    end = FakeEnd(trio.lowlevel.FdStream(request_r), trio.lowlevel.FdStream(reply_w),
                  request_w)
    try:
        yield channel, end, nudges
    finally:
        await channel.aclose()
        await end.requests.aclose()
        await end.replies.aclose()


async def cancelled_call(channel: FramedChannel, *args: Any) -> None:
    """Start a call and cancel it once it is parked (mid-write or waiting for the reply)."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def call() -> None:
            with scope:
                await channel.call(*args)

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    assert scope.cancelled_caught


async def test_a_cancel_mid_write_keeps_the_rest_and_the_drain_sends_it_first() -> None:
    async with channel_and_worker() as (channel, end, nudges):
        await cancelled_call(channel, "echo", BIG)  # parked: the pipe is full
        assert channel.dirty and channel.abandoned and not channel.broken
        assert not nudges  # nothing is sent before the drain

        async with trio.open_nursery() as nursery:
            outcome: list[str] = []

            async def drain() -> None:
                outcome.append(await channel.drain_abandoned())

            nursery.start_soon(drain)
            # The worker sees the whole request, then the abandon, nothing else.
            assert await end.message() == {"id": 1, "command": "echo", "args": BIG,
                                           "session": None}
            assert await end.message() == {"abandon": 1}
            assert nudges == ["nudged"]
            await end.reply(error_response(1, CANCELLED, "abandoned"))
        assert outcome == ["cancelled"]
        assert not channel.dirty and not channel.abandoned

        async with trio.open_nursery() as nursery:
            nursery.start_soon(end.message)
            result: list[Any] = []

            async def call() -> None:
                result.append(await channel.call("ping"))

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await end.reply(ok_response(2, "pong"))
        assert result == ["pong"]


async def test_a_normal_answer_drains_too() -> None:
    """The handler finished anyway (it ignored the abandon): its reply is read and dropped."""
    async with channel_and_worker() as (channel, end, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_call, channel, "sleep", {"seconds": 1})
            assert (await end.message())["id"] == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.drain_abandoned)
            assert await end.message() == {"abandon": 1}
            await end.reply(ok_response(1, {"slept": 1}))
        assert not channel.dirty


async def test_a_reply_for_another_id_fails_the_drain() -> None:
    async with channel_and_worker() as (channel, end, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_call, channel, "sleep", {"seconds": 1})
            await end.message()
        await end.reply(ok_response(7, "stray"))
        with pytest.raises(DrainFailed, match="reply id 7 while draining"):
            await channel.drain_abandoned()
        assert channel.broken and channel.drain_failed and not channel.abandoned


async def test_the_grace_bounds_the_drain(autojump_clock: trio.testing.MockClock) -> None:
    async with channel_and_worker(cancel_grace=0.5) as (channel, end, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_call, channel, "hang")
            await end.message()
        began = trio.current_time()
        with pytest.raises(DrainFailed, match=r"within cancel_grace=0\.5s"):
            await channel.drain_abandoned()
        assert trio.current_time() - began == pytest.approx(0.5)
        assert channel.broken


async def test_nothing_written_nothing_abandoned() -> None:
    """Cancelled before a byte of the request went out (the pipe was full):
    the worker never saw it, so the channel stays clean."""
    async with channel_and_worker() as (channel, end, _):
        filler = b"\0" * 65536
        while True:  # fill the pipe (the FdStream made it non-blocking)
            try:
                os.write(end.parent_fd, filler)
            except BlockingIOError:
                break
        await cancelled_call(channel, "ping")
        assert not channel.dirty and not channel.abandoned


async def test_time_out_abandons_and_raises_call_timeout() -> None:
    async with channel_and_worker() as (channel, end, nudges):
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await channel.call("sleep", {"seconds": 9})
            except CallTimeout as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await end.message()
            await trio.testing.wait_all_tasks_blocked()
            channel.time_out(2.5)
        assert outcome[0].timeout == 2.5  # type: ignore[attr-defined]
        assert channel.abandoned and not channel.broken
        # The next call drains first (the worker answers the abandon), then goes.
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def next_call() -> None:
                result.append(await channel.call("ping"))

            nursery.start_soon(next_call)
            assert await end.message() == {"abandon": 1}
            await end.reply(error_response(1, CANCELLED, "abandoned"))
            assert (await end.message())["id"] == 2
            await end.reply(ok_response(2, "pong"))
        assert result == ["pong"] and nudges == ["nudged"]
