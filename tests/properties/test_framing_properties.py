"""Framing under fragmentation and garbage: FramedChannel + FakeWorker (layer 2).

The decoder alone is covered in tests/test_protocol.py; here the bytes travel the
real parent-side channel (the one ProcessWorker uses) from a fake worker whose
writes are cut at arbitrary points, each piece read separately:

* a reply cut anywhere gives exactly the result an uncut reply gives;
* a complete frame holding garbage always ends the call with ProtocolError and
  leaves the worker dirty;
* arbitrary bytes end the call with ProtocolError whenever the decoder rejects
  them, else with WorkerCrashed (the worker then exits) or CallTimeout (it
  stays silent): never a hang, never an untyped exception.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import assume, given
from hypothesis import strategies as st

from engine.errors import CallTimeout, ProtocolError, WorkerCrashed
from engine.process.handle import SpawnRequest
from engine.protocol import FrameDecoder, parse_response
from engine.testing.fakes import (
    NO_REPLY,
    FakeContext,
    FakeExit,
    FakeWorker,
    FakeWorkerFactory,
    Script,
    garbage_frame,
)
from engine.testing.profiles import scaled

pytestmark = pytest.mark.layer2

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
cut_points = st.lists(st.integers(1, 40), max_size=12)


def splitter(cuts: list[int]) -> Any:
    """Cut every frame after cuts[0] bytes, then cuts[1] more, ...; the rest is one piece."""

    def split(frame: bytes) -> list[bytes]:
        pieces, at = [], 0
        for size in cuts:
            if at >= len(frame):
                break
            pieces.append(frame[at:at + size])
            at += size
        pieces.append(frame[at:])
        return pieces

    return split


# A local worker's request: its channel takes pickle frames too (run_sync).
REQUEST = SpawnRequest(worker_id="w", app="fake", start_timeout=5.0)


def run_with_worker(script: Script, body: Any) -> Any:
    """Start one fake worker with ``script`` and run ``body(worker)`` under a MockClock."""

    async def main() -> Any:
        factory = FakeWorkerFactory(script)
        with trio.fail_after(60):  # virtual seconds: a hang fails instead of blocking
            async with factory(REQUEST) as worker:
                return await body(worker)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@scaled(max_examples=150)
@given(value=json_values, cuts=cut_points)
def test_a_reply_cut_anywhere_gives_the_same_result(value: Any, cuts: list[int]) -> None:
    async def echo(worker: FakeWorker) -> Any:
        return await worker.call("echo", value, timeout=10)

    whole = run_with_worker(Script(), echo)
    pieces = run_with_worker(Script(split=splitter(cuts)), echo)
    assert pieces == whole == value


@scaled(max_examples=50)
@given(value=json_values)
def test_one_byte_writes_give_the_same_result(value: Any) -> None:
    async def echo(worker: FakeWorker) -> Any:
        return await worker.call("echo", value, timeout=10)

    assert run_with_worker(Script(reply_mode="fragmented"), echo) == value


def _writes(data: bytes, then: str) -> Any:
    async def handler(ctx: FakeContext, args: Any) -> Any:
        await ctx.write_raw(data)
        if then == "exit":
            raise FakeExit(1)
        await trio.sleep_forever()
        return NO_REPLY

    return handler


def _call_outcome(data: bytes, then: str, cuts: list[int]) -> BaseException | Any:
    script = Script(handlers={"emit": _writes(data, then)}, split=splitter(cuts))

    async def call(worker: FakeWorker) -> Any:
        try:
            result = await worker.call("emit", None, timeout=1.0)
        except (ProtocolError, WorkerCrashed, CallTimeout) as exc:
            return exc, worker.dirty
        return result, worker.dirty

    return run_with_worker(script, call)


@scaled(max_examples=150)
@given(body=st.binary(max_size=60), then=st.sampled_from(["exit", "stay"]), cuts=cut_points)
def test_a_garbage_frame_is_always_a_protocol_error(body: bytes, then: str,
                                                    cuts: list[int]) -> None:
    frame = garbage_frame(body) if body else b"\x00\x00\x00\x00"  # empty frame: invalid too
    decoder = FrameDecoder()
    try:
        decoder.feed(frame)
        message = decoder.next_message()
        response = parse_response(message)
        assume(response.id != 1)  # a valid reply to our request is not garbage
    except ProtocolError:
        pass
    outcome, dirty = _call_outcome(frame, then, cuts)
    assert isinstance(outcome, ProtocolError), outcome
    assert dirty, "the channel must not be reused after a protocol error"


@scaled(max_examples=200)
@given(data=st.binary(min_size=1, max_size=40), then=st.sampled_from(["exit", "stay"]),
       cuts=cut_points)
def test_arbitrary_bytes_end_the_call_with_a_typed_error(data: bytes, then: str,
                                                         cuts: list[int]) -> None:
    # The parent's channel decodes as this decoder does (pickle frames allowed).
    decoder = FrameDecoder(REQUEST.max_frame_size, REQUEST.pickle_frame_size)
    rejected = complete = False
    try:
        decoder.feed(data)
        message = decoder.next_message()
        if message is not None:
            complete = True
            response = parse_response(message)
            if response.id != 1:
                rejected = True  # the channel refuses a reply to another request
    except ProtocolError:
        rejected = True
    assume(rejected or not complete)  # a well-formed reply to us is not garbage
    outcome, _dirty = _call_outcome(data, then, cuts)
    if rejected:
        assert isinstance(outcome, ProtocolError), outcome
    elif then == "exit":
        assert isinstance(outcome, WorkerCrashed), outcome
    else:
        assert isinstance(outcome, CallTimeout), outcome


@scaled(max_examples=30)
@given(cuts=cut_points)
def test_a_reply_to_another_request_is_a_protocol_error(cuts: list[int]) -> None:
    async def call(worker: FakeWorker) -> Any:
        with pytest.raises(ProtocolError, match="does not match request id"):
            await worker.call("ping", timeout=10)
        return worker.dirty

    assert run_with_worker(Script(reply_mode="wrong_id", split=splitter(cuts)), call)
