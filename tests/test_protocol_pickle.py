"""Pickle frames (run_sync) at their edges: limits, the session name, the
envelope checks and their messages. Pure, layer 1 (the round trips live in
tests/test_protocol.py)."""

from __future__ import annotations

import json
import struct

import pytest

from engine.errors import ProtocolError, RequestTooLarge
from engine.protocol import (
    PICKLE_CALL,
    PICKLE_COMMAND,
    PICKLE_FLAG,
    PICKLE_RAISED,
    PICKLE_RESULT,
    FrameDecoder,
    Pickled,
    decode_pickle_body,
    encode_pickle_frame,
)

pytestmark = pytest.mark.layer1

ENVELOPE = struct.calcsize(">QBH")  # request id, kind, session length
NO_SESSION = 0xFFFF


def body_of(frame: bytes) -> bytes:
    return frame[4:]


def test_pickled_repr_names_the_size_and_whether_it_was_raised() -> None:
    assert repr(Pickled(b"abc")) == "Pickled(3 bytes)"
    assert repr(Pickled(memoryview(b"ab"), raised=True)) == "Pickled(2 bytes, raised)"


# --- encoding ---------------------------------------------------------------------------


def test_a_frame_of_exactly_max_size_is_encoded() -> None:
    size = ENVELOPE + 5
    frame = encode_pickle_frame(1, PICKLE_CALL, b"12345", None, size)
    assert int.from_bytes(frame[:4], "big") == size | PICKLE_FLAG
    with pytest.raises(RequestTooLarge):
        encode_pickle_frame(1, PICKLE_CALL, b"12345", None, size - 1)


def test_too_large_names_the_pickle_command_and_the_size() -> None:
    with pytest.raises(RequestTooLarge) as info:
        encode_pickle_frame(1, PICKLE_CALL, b"x" * 100, "s", 50)
    assert info.value.command == PICKLE_COMMAND
    assert info.value.size == ENVELOPE + 1 + 100
    assert info.value.max_frame_size == 50


def test_a_session_name_as_long_as_the_no_session_marker_is_refused() -> None:
    # 0xFFFF in the length field means "no session", so a name cannot use it.
    longest = "a" * (NO_SESSION - 1)
    frame = encode_pickle_frame(1, PICKLE_CALL, b"p", longest, 1 << 20)
    assert decode_pickle_body(body_of(frame))["session"] == longest
    with pytest.raises(RequestTooLarge):
        encode_pickle_frame(1, PICKLE_CALL, b"p", "a" * NO_SESSION, 1 << 20)


def test_a_session_with_a_lone_surrogate_round_trips() -> None:
    # Session names come from user code: a str from os.fsdecode may hold one.
    session = "s\udce9"
    frame = encode_pickle_frame(4, PICKLE_CALL, b"p", session, 1 << 20)
    assert frame[4 + ENVELOPE:4 + ENVELOPE + 4] == b"s\xed\xb3\xa9"
    message = decode_pickle_body(body_of(frame))
    assert message["session"] == session


def test_an_empty_session_is_not_no_session() -> None:
    frame = encode_pickle_frame(2, PICKLE_CALL, b"p", "", 1 << 20)
    assert struct.unpack_from(">QBH", frame, 4) == (2, PICKLE_CALL, 0)
    assert decode_pickle_body(body_of(frame))["session"] == ""


# --- decoding ---------------------------------------------------------------------------


def test_a_body_of_exactly_the_envelope_decodes_to_an_empty_payload() -> None:
    body = struct.pack(">QBH", 1, PICKLE_RESULT, NO_SESSION)
    assert len(body) == ENVELOPE
    message = decode_pickle_body(body)
    assert message["id"] == 1 and message["ok"] is True
    assert bytes(message["result"].data) == b""


def test_a_session_reaching_the_end_of_the_body_leaves_an_empty_payload() -> None:
    body = struct.pack(">QBH", 9, PICKLE_CALL, 2) + b"ab"
    message = decode_pickle_body(body)
    assert message == {"id": 9, "command": PICKLE_COMMAND, "args": message["args"],
                       "session": "ab"}
    assert bytes(message["args"].data) == b""


def test_request_id_one_is_the_smallest_accepted() -> None:
    assert decode_pickle_body(struct.pack(">QBH", 1, PICKLE_RAISED, NO_SESSION) + b"x")[
        "result"].raised is True
    with pytest.raises(ProtocolError, match=r"^malformed pickle frame envelope \(id 0, kind 1\)$"):
        decode_pickle_body(struct.pack(">QBH", 0, PICKLE_RESULT, NO_SESSION))


def test_a_short_body_says_it_is_shorter_than_its_envelope() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_pickle_body(b"\x00" * (ENVELOPE - 1))
    assert str(info.value) == f"pickle frame of {ENVELOPE - 1} bytes is shorter than its envelope"


def test_a_session_that_is_not_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_pickle_body(struct.pack(">QBH", 3, PICKLE_CALL, 1) + b"\xff")
    assert str(info.value) == "pickle frame session is not UTF-8"


# --- the decoder's header check ---------------------------------------------------------


def json_frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def test_a_pickle_accepting_decoder_still_decodes_json_frames() -> None:
    decoder = FrameDecoder(max_pickle_frame_size=1 << 20)
    pickle = encode_pickle_frame(5, PICKLE_RESULT, b"v", None, 1 << 20)
    decoder.feed(json_frame({"id": 1, "ok": True, "result": 2}) + pickle
                 + json_frame({"id": 3, "ok": True, "result": 4}))
    first, second, third = decoder.messages()
    assert first == {"id": 1, "ok": True, "result": 2}
    assert bytes(second["result"].data) == b"v"
    assert third == {"id": 3, "ok": True, "result": 4}  # not read as a pickle body
    assert decoder.buffered == 0


def test_pickle_frames_at_both_ends_of_the_allowed_length_are_accepted() -> None:
    smallest = struct.pack(">I", ENVELOPE | PICKLE_FLAG) + struct.pack(
        ">QBH", 1, PICKLE_RESULT, NO_SESSION)
    limit = ENVELOPE + 3
    largest = encode_pickle_frame(2, PICKLE_RESULT, b"abc", None, limit)
    decoder = FrameDecoder(max_pickle_frame_size=limit)
    decoder.feed(smallest + largest)
    first, second = decoder.messages()
    assert bytes(first["result"].data) == b""
    assert bytes(second["result"].data) == b"abc"


def test_a_pickle_frame_outside_its_bounds_names_the_setting_to_raise() -> None:
    decoder = FrameDecoder(max_pickle_frame_size=100)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(struct.pack(">I", 101 | PICKLE_FLAG))
    assert str(info.value) == (
        f"pickle frame length 101 is outside {ENVELOPE}..100 (max_pickle_frame_size); "
        "send less data per call or raise max_pickle_frame_size")
    assert decoder.buffered == 0


def test_a_json_only_decoder_says_a_flagged_length_may_be_a_pickle_frame() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(max_frame_size=100).feed(struct.pack(">I", 5 | PICKLE_FLAG))
    assert str(info.value) == (
        f"frame length {5 | PICKLE_FLAG} exceeds max_frame_size=100; the peer sent an "
        "oversized frame or garbage (or a pickle frame, which this side does not accept)")

