"""The frame codec and the envelopes (design section 3): pure, layer 1."""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import protocol
from engine.errors import ArgumentTypeError, ArgumentValueError, ProtocolError, RequestTooLarge
from engine.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    Abandon,
    FrameDecoder,
    Request,
    abandon_message,
    decode_body,
    encode_frame,
    error_response,
    hello_message,
    make_request,
    ok_response,
    parse_hello,
    parse_incoming,
    parse_request,
    parse_response,
)

pytestmark = pytest.mark.layer1


def frame(body: bytes) -> bytes:
    """A frame with an arbitrary (possibly malformed) body."""
    return struct.pack(">I", len(body)) + body


def decode_all(data: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[dict[str, Any]]:
    decoder = FrameDecoder(max_frame_size)
    decoder.feed(data)
    return list(decoder.messages())


# --- encoding and decoding ---------------------------------------------------------


def test_encode_frame_layout() -> None:
    data = encode_frame({"a": 1})
    assert data[:4] == struct.pack(">I", len(data) - 4)
    assert json.loads(data[4:]) == {"a": 1}


def test_encode_keeps_non_ascii_as_utf8() -> None:
    data = encode_frame({"text": "héllo ✓"})
    assert "héllo ✓".encode() in data
    assert decode_all(data) == [{"text": "héllo ✓"}]


@pytest.mark.parametrize("message", [
    {},
    {"a": [1, 2.5, -3, True, False, None, "x"]},
    {"nested": {"deep": {"deeper": [{"k": "v"}]}}},
    {"big": 2**70, "neg": -(2**70), "float": 1e300},
    {"unicode": "日本語 \u0000 \U0001f600"},
])
def test_round_trip(message: dict[str, Any]) -> None:
    assert decode_all(encode_frame(message)) == [message]


def test_several_frames_fed_one_byte_at_a_time() -> None:
    messages = [make_request(i, "echo", {"i": i, "pad": "x" * i}, session=None)
                for i in range(1, 6)]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    received: list[dict[str, Any]] = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        received.extend(decoder.messages())
    assert received == messages
    assert decoder.buffered == 0


def test_partial_frame_waits_for_more() -> None:
    data = encode_frame({"a": 1})
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_message() is None
    assert decoder.buffered == len(data) - 1
    decoder.feed(data[-1:])
    assert decoder.next_message() == {"a": 1}


def test_decoder_rejects_tiny_max_frame_size() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(1)


# --- malformed frames ----------------------------------------------------------------


def test_oversized_length_rejected_before_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(ProtocolError, match="exceeds max_frame_size=100"):
        decoder.feed(struct.pack(">I", 101))  # the header alone: no body sent yet


def test_huge_length_rejected_with_default_limit() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds max_frame_size"):
        decoder.feed(b"\xff\xff\xff\xff")


def test_oversized_length_found_after_a_good_frame() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.feed(encode_frame({"a": 1}) + struct.pack(">I", 5000))
    received: list[dict[str, Any]] = []
    with pytest.raises(ProtocolError, match="exceeds"):
        while (message := decoder.next_message()) is not None:
            received.append(message)
    # The next header is checked once the good frame has been returned: a good
    # frame is never lost because garbage follows it.
    assert received == [{"a": 1}]


def test_zero_length_rejected() -> None:
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


@pytest.mark.parametrize(("body", "match"), [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"a": "\xc3"}', "UTF-8"),
    (b"{not json", "not valid JSON"),
    (b'{"a": 1} trailing', "not valid JSON"),
    (b"", None),  # length 0 is checked first, see above; here via decode_body
    (b'{"a": NaN}', "non-standard JSON constant NaN"),
    (b'{"a": Infinity}', "non-standard JSON constant Infinity"),
    (b'{"a": -Infinity}', "non-standard JSON constant -Infinity"),
    (b"[1, 2]", "got list"),
    (b"1", "got int"),
    (b'"text"', "got str"),
    (b"null", "got NoneType"),
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
])
def test_malformed_body(body: bytes, match: str | None) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_body(body)
    if body:
        with pytest.raises(ProtocolError):
            decode_all(frame(body))


@pytest.mark.parametrize("message", [
    {"a": {1, 2}},
    {"a": object()},
    {"a": float("nan")},
    {"a": float("inf")},
    {"a": "\ud800"},  # a lone surrogate is not encodable as UTF-8
    {(1, 2): "tuple key"},
])
def test_unencodable_message(message: dict[Any, Any]) -> None:
    with pytest.raises(ProtocolError, match="not JSON-serialisable"):
        encode_frame(message)


def test_encode_rejects_non_object() -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        encode_frame([1, 2])  # type: ignore[arg-type]


def test_encode_rejects_oversized() -> None:
    with pytest.raises(ProtocolError, match="exceeds max_frame_size=50"):
        encode_frame({"a": "x" * 100}, max_frame_size=50)


def test_encode_at_exact_limit() -> None:
    message = {"a": "x" * 10}
    size = len(encode_frame(message)) - 4
    assert decode_all(encode_frame(message, max_frame_size=size), max_frame_size=size) \
        == [message]


# --- envelopes ------------------------------------------------------------------------


def test_request_round_trip() -> None:
    message = make_request(7, "execute_program", {"id": "p"}, session="s1")
    request = parse_request(decode_all(encode_frame(message))[0])
    assert (request.id, request.command, request.args, request.session) == \
        (7, "execute_program", {"id": "p"}, "s1")
    assert request.to_message() == message


def test_request_defaults_args_and_session_to_none() -> None:
    request = parse_request({"id": 1, "command": "ping"})
    assert request.args is None
    assert request.session is None


@pytest.mark.parametrize(("message", "match"), [
    ([], "must be a JSON object"),
    ({"command": "ping"}, "missing id"),
    ({"id": 1}, "missing command"),
    ({}, "missing id, command"),
    ({"id": 0, "command": "ping"}, "id must be an integer >= 1"),
    ({"id": -3, "command": "ping"}, "id must be an integer >= 1"),
    ({"id": True, "command": "ping"}, "id must be an integer >= 1"),
    ({"id": "1", "command": "ping"}, "id must be an integer >= 1"),
    ({"id": 1.0, "command": "ping"}, "id must be an integer >= 1"),
    ({"id": 1, "command": ""}, "command must be a non-empty string"),
    ({"id": 1, "command": 5}, "command must be a non-empty string"),
    ({"id": 1, "command": "ping", "session": 5}, "session must be a string or null"),
])
def test_bad_request(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_request(message)


def test_abandon_frames_are_parsed_by_parse_incoming_only() -> None:
    """``{"abandon": id}`` names the request to give up; parse_request (a request
    expected) refuses it, parse_incoming (what a worker reads) returns it."""
    abandon = parse_incoming(decode_all(encode_frame(abandon_message(12)))[0])
    assert isinstance(abandon, Abandon) and abandon.id == 12
    assert isinstance(parse_incoming({"id": 1, "command": "ping"}), Request)
    with pytest.raises(ProtocolError, match="abandon frame"):
        parse_request({"abandon": 3})


@pytest.mark.parametrize(("message", "match"), [
    ({"abandon": 0}, "abandon must name a request id >= 1"),
    ({"abandon": True}, "abandon must name a request id >= 1"),
    ({"abandon": "3"}, "abandon must name a request id >= 1"),
    ({"abandon": 3, "extra": 1}, "missing id, command"),  # not an abandon frame
])
def test_bad_abandon(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_incoming(message)


def test_ok_response_round_trip() -> None:
    response = parse_response(decode_all(encode_frame(ok_response(3, [1, "a"])))[0])
    assert (response.id, response.ok, response.result, response.error) == (3, True, [1, "a"], None)


def test_ok_response_with_null_result() -> None:
    assert parse_response(ok_response(3, None)).result is None


def test_error_response_round_trip() -> None:
    message = error_response(4, "RuntimeError", "boom", "Traceback...")
    response = parse_response(decode_all(encode_frame(message))[0])
    assert response.id == 4 and response.ok is False
    assert response.error is not None
    assert (response.error.type, response.error.message, response.error.traceback) == \
        ("RuntimeError", "boom", "Traceback...")


@pytest.mark.parametrize(("message", "match"), [
    ("nope", "must be a JSON object"),
    ({"ok": True, "result": 1}, "lacks 'id' or 'ok'"),
    ({"id": 1, "result": 1}, "lacks 'id' or 'ok'"),
    ({"id": -1, "ok": True, "result": 1}, "id must be an integer >= 0"),
    ({"id": False, "ok": True, "result": 1}, "id must be an integer >= 0"),
    ({"id": 1, "ok": True}, "lacks 'result'"),
    ({"id": 1, "ok": "yes", "result": 1}, "'ok' must be true or false"),
    ({"id": 1, "ok": 1, "result": 1}, "'ok' must be true or false"),
    ({"id": 1, "ok": False}, "needs an 'error' object"),
    ({"id": 1, "ok": False, "error": "boom"}, "needs an 'error' object"),
    ({"id": 1, "ok": False, "error": {"message": "m"}}, "string 'type' and 'message'"),
    ({"id": 1, "ok": False, "error": {"type": "T", "message": 3}}, "string 'type' and 'message'"),
    ({"id": 1, "ok": False, "error": {"type": "T", "message": "m", "traceback": 1}},
     "'traceback' must be a string or null"),
])
def test_bad_response(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_response(message)


def test_hello_round_trip() -> None:
    message = hello_message("w1", 1234, "programs", ["ping", "echo"])
    hello = parse_hello(decode_all(encode_frame(message))[0])
    assert (hello.protocol, hello.worker_id, hello.pid, hello.app, hello.commands) == \
        (protocol.PROTOCOL_VERSION, "w1", 1234, "programs", ["ping", "echo"])


def test_hello_host_is_optional() -> None:
    with_host = parse_hello(hello_message("w1", 7, "programs", [], host="db1"))
    assert with_host.host == "db1"
    message = hello_message("w1", 7, "programs", [])
    assert "host" not in message["result"]  # an older worker says nothing
    assert parse_hello(message).host is None


def test_hello_schemas_are_optional() -> None:
    shape = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    message = hello_message("w1", 7, "app", ["ping", "incr"], schemas={"incr": shape})
    assert parse_hello(decode_all(encode_frame(message))[0]).schemas == {"incr": shape}
    older = hello_message("w1", 7, "app", ["ping", "incr"])
    assert "schemas" not in older["result"]  # what a worker before schemas sent
    assert parse_hello(older).schemas == {}


def _hello_with(**changes: Any) -> dict[str, Any]:
    message = hello_message("w1", 1234, "programs", ["ping"])
    message["result"].update(changes)
    return message


@pytest.mark.parametrize(("message", "match"), [
    (ok_response(1, {}), "expected hello \\(id 0\\)"),
    (error_response(0, "ImportError", "no module x"), "start failure: ImportError: no module x"),
    (ok_response(0, ["not", "a", "dict"]), "hello result must be an object"),
    (_hello_with(protocol=2), "speaks protocol 2"),
    (_hello_with(protocol=None), "speaks protocol None"),
    (_hello_with(worker_id=5), "string worker_id"),
    (_hello_with(pid="1234"), "integer pid"),
    (_hello_with(pid=True), "integer pid"),
    (_hello_with(app=None), "string app"),
    (_hello_with(commands="ping"), "'commands' must be a list of strings"),
    (_hello_with(commands=["ping", 3]), "'commands' must be a list of strings"),
    (_hello_with(host=5), "'host' must be a string"),
    (_hello_with(schemas=["ping"]), "'schemas' must map command names to schema objects"),
    (_hello_with(schemas={"ping": "int"}), "'schemas' must map command names"),
    (_hello_with(schemas={"incr": {}}), "describes \\['incr'\\], which are not in"),
    ({"id": 0, "ok": True}, "lacks 'result'"),
])
def test_bad_hello(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_hello(message)


def test_hello_without_protocol_key() -> None:
    message = hello_message("w1", 1, "a", [])
    del message["result"]["protocol"]
    with pytest.raises(ProtocolError, match="protocol"):
        parse_hello(message)


# --- properties -------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(messages=st.lists(json_objects, max_size=8), cuts=st.lists(st.integers(0, 10**6)))
def test_any_split_of_any_stream_decodes_identically(
    messages: list[dict[str, Any]], cuts: list[int],
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    received: list[dict[str, Any]] = []
    for chunk in split_at(stream, cuts):
        decoder.feed(chunk)
        received.extend(decoder.messages())
    assert received == messages
    assert decoder.buffered == 0


# Mix real frames, frame-shaped junk and raw junk so the decoder meets both
# plausible headers and garbage.
stream_pieces = st.one_of(
    json_objects.map(encode_frame),
    st.binary(max_size=40).map(frame),
    st.binary(max_size=40),
)


@given(pieces=st.lists(stream_pieces, max_size=6), cuts=st.lists(st.integers(0, 10**6)),
       max_frame_size=st.integers(2, 200))
def test_arbitrary_bytes_yield_dicts_or_protocol_error(
    pieces: list[bytes], cuts: list[int], max_frame_size: int,
) -> None:
    decoder = FrameDecoder(max_frame_size)
    try:
        for chunk in split_at(b"".join(pieces), cuts):
            decoder.feed(chunk)
            for message in decoder.messages():
                assert isinstance(message, dict)
    except ProtocolError:
        pass  # the only failure allowed; the stream is abandoned after it


@given(message=st.dictionaries(st.sampled_from(["id", "command", "args", "session", "x"]),
                               json_values))
def test_parse_request_accepts_or_raises_protocol_error(message: dict[str, Any]) -> None:
    try:
        request = parse_request(message)
    except ProtocolError:
        return
    assert isinstance(request.id, int) and request.id >= 1
    assert isinstance(request.command, str) and request.command
    assert request.session is None or isinstance(request.session, str)


@given(message=st.dictionaries(st.sampled_from(["id", "ok", "result", "error"]),
                               json_values | st.dictionaries(
                                   st.sampled_from(["type", "message", "traceback"]),
                                   json_values)))
def test_parse_response_accepts_or_raises_protocol_error(message: dict[str, Any]) -> None:
    try:
        response = parse_response(message)
    except ProtocolError:
        return
    assert response.ok is (response.error is None)


# --- requests: what the caller passed is checked before anything is sent (issue 18) --


@given(args=json_values, request_id=st.integers(1, 2**31), session=st.none() | st.text())
def test_every_json_value_is_sent_unchanged(args: Any, request_id: int,
                                            session: str | None) -> None:
    frame_bytes = protocol.encode_request(request_id, "echo", args, session)
    request = parse_request(decode_all(frame_bytes)[0])
    assert (request.id, request.command, request.args, request.session) \
        == (request_id, "echo", args, session)


# A value with a non-str key somewhere inside: a JSON value with one dict
# swapped for one holding an int, float, bool or None key.
bad_keys = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
values_with_a_bad_key = st.recursive(
    st.dictionaries(bad_keys, json_values, min_size=1, max_size=3),
    lambda inner: st.lists(inner, min_size=1, max_size=3).flatmap(
        lambda items: st.lists(json_values, max_size=3).map(lambda rest: [*rest, *items]))
    | st.builds(lambda key, value, rest: {**rest, key: value}, st.text(), inner,
                st.dictionaries(st.text(), json_values, max_size=3)),
    max_leaves=6,
)


@given(args=values_with_a_bad_key)
def test_a_non_str_key_anywhere_is_refused_and_located(args: Any) -> None:
    assert not protocol.keys_are_strings(args)
    with pytest.raises(ArgumentTypeError) as info:
        protocol.encode_request(1, "echo", args, None)
    path = info.value.path
    assert path.startswith("args") and "has the key" in str(info.value)
    # The path leads to a dict holding a key that is not a str.
    target = args
    for part in path[len("args"):].strip("[]").split("]["):
        if part:
            target = target[json.loads(part)]
    assert isinstance(target, dict) and not all(isinstance(k, str) for k in target)


@given(args=json_values)
def test_keys_are_strings_accepts_every_json_value(args: Any) -> None:
    assert protocol.keys_are_strings(args)
    assert protocol.find_unencodable(args, "args") is None


def test_str_subclass_keys_and_container_subclasses_are_json() -> None:
    import collections
    import enum

    class Colour(enum.StrEnum):
        RED = "red"

    value = collections.OrderedDict({Colour.RED: [(1, 2)]})
    assert protocol.keys_are_strings(value)
    assert decode_all(protocol.encode_request(1, "c", value, None))[0]["args"] \
        == {"red": [[1, 2]]}
    assert not protocol.keys_are_strings(collections.OrderedDict({1: 2}))
    assert not protocol.keys_are_strings([(0, {"a": {2.5: 1}})])


def test_request_too_large_counts_the_whole_frame() -> None:
    fits = protocol.encode_request(1, "echo", "x" * 10, None)
    size = len(fits) - 4
    assert protocol.encode_request(1, "echo", "x" * 10, None, max_frame_size=size) == fits
    with pytest.raises(RequestTooLarge) as info:
        protocol.encode_request(1, "echo", "x" * 11, None, max_frame_size=size)
    assert (info.value.size, info.value.max_frame_size) == (size + 1, size)


def test_nesting_deeper_than_the_encoder_can_go_is_a_value_error() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ArgumentValueError, match="nested too deeply"):
        protocol.encode_request(1, "echo", deep, None)
    found = protocol.find_unencodable(deep, "args")  # its own stack: no RecursionError
    assert found is None


def test_find_unencodable_reports_the_first_problem_in_order() -> None:
    value = {"a": [1, {"b": float("inf")}], "c": {3}}
    assert protocol.find_unencodable(value, "result") == (
        'result["a"][1]["b"]', False,
        'result["a"][1]["b"] is inf, which JSON cannot carry (it has no NaN or Infinity); '
        "send None or a str instead")
    path, is_type, problem = protocol.find_unencodable({"k\"ey": {1, 2}}, "args") or ("", 0, "")
    assert path == 'args["k\\"ey"]' and is_type
    assert problem.startswith('args["k\\"ey"] is {1, 2} (type set), which JSON cannot carry')


# --- exact wording: every error says what was wrong and what to do ----------------------


def error_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return str(info.value)


SEND_ONLY = "send only dict/list/str/int/float/bool/None"


def test_encode_errors_say_what_to_send() -> None:
    assert error_of(encode_frame, [1, 2]) == "a frame must hold a JSON object, not list"
    assert error_of(encode_frame, {"a": "x" * 100}, max_frame_size=50) == (
        "frame of 108 bytes exceeds max_frame_size=50; "
        "send less data per call or raise max_frame_size")
    circular: dict[str, Any] = {}
    circular["a"] = circular
    assert error_of(encode_frame, circular) == (
        f"message is not JSON-serialisable (Circular reference detected); {SEND_ONLY}")
    assert error_of(encode_frame, {"s": "\ud800"}) == (
        "message is not JSON-serialisable ('utf-8' codec can't encode character '\\ud800' "
        f"in position 6: surrogates not allowed); {SEND_ONLY}")


def test_decode_errors_quote_the_start_of_the_body() -> None:
    body = b"{" + b"x" * 100
    assert error_of(decode_body, body) == (
        "frame body is not valid JSON (Expecting property name enclosed in double quotes: "
        f"line 1 column 2 (char 1)): {body[:60].decode()!r}")


def test_decoder_errors_name_the_limit_and_the_likely_cause() -> None:
    with pytest.raises(ValueError) as info:
        FrameDecoder(1)
    assert str(info.value) == "max_frame_size must be at least 2 bytes"
    assert error_of(FrameDecoder(max_frame_size=100).feed, struct.pack(">I", 101)) == (
        "frame length 101 exceeds max_frame_size=100; "
        "the peer sent an oversized frame or garbage")
    assert error_of(FrameDecoder().feed, b"\x00\x00\x00\x00") == (
        "empty frame (length 0); a frame must hold a JSON object")


def test_envelope_errors_name_the_type_or_keys_found() -> None:
    assert error_of(parse_request, [1]) == "request must be a JSON object, got list"
    assert error_of(parse_response, "x") == "response must be a JSON object, got str"
    assert error_of(parse_response, {k: 1 for k in "jihgfedcba"}) == (
        "response lacks 'id' or 'ok': keys are ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']")


def test_a_response_with_mixed_key_types_is_a_protocol_error() -> None:
    # Only a Python caller can build one (JSON keys are strings), but the
    # validators promise ProtocolError for every malformed input: this was a
    # TypeError from sorting the keys for the message.
    assert error_of(parse_response, {1: "x", "a": 2, None: 3}) == (
        "response lacks 'id' or 'ok': keys are [1, None, 'a']")
    assert error_of(parse_hello, ok_response(0, ["x"])) == (
        "hello result must be an object, got list")
    assert error_of(parse_hello, _hello_with(protocol=2)) == (
        f"worker speaks protocol 2, this parent speaks {protocol.PROTOCOL_VERSION}; "
        "run the same engine version on both sides")
    assert error_of(parse_hello, _hello_with(pid=None)) == (
        "hello needs string worker_id, integer pid and string app")
    assert error_of(parse_hello, _hello_with(commands=None)) == (
        "hello 'commands' must be a list of strings")


# --- the fast paths ------------------------------------------------------------------------

AWKWARD = {"z": [1, 2.5, None, True], "a": {"é": "ünï\u2028", "n": -0.0}, "m": ""}


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def test_the_fast_encoder_is_the_c_encoder_and_writes_what_json_would() -> None:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - an interpreter without the _json accelerator
        pytest.skip("no C JSON encoder here")
    encode = protocol._make_fast_encoder()
    assert isinstance(encode, make)
    assert "".join(encode(AWKWARD, 0)) == compact(AWKWARD)  # key order kept, UTF-8 kept
    with pytest.raises(ValueError):
        encode({"a": float("nan")}, 0)
    with pytest.raises(TypeError):
        encode({(1, 2): 3}, 0)  # keys are never skipped silently


@pytest.mark.parametrize("c_encoder", [
    None,  # no _json accelerator
    lambda *args: (_ for _ in ()).throw(TypeError("other signature")),  # another interpreter's
])
def test_without_the_c_encoder_the_fallback_writes_the_same(
    c_encoder: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only while the encoder is built: json's own encoder uses it too.
    with monkeypatch.context() as patch:
        patch.setattr(json.encoder, "c_make_encoder", c_encoder)
        encode = protocol._make_fast_encoder()
    assert "".join(encode(AWKWARD, 0)) == compact(AWKWARD)


def test_valid_messages_never_take_the_slow_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # The slow paths exist to word errors; a good message going through them
    # would cost a second encode or decode on every call.
    def slow(*args: Any) -> Any:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(protocol, "_encode_or_explain", slow)
    monkeypatch.setattr(protocol, "_decode_or_explain", slow)
    data = encode_frame(AWKWARD)
    assert data == struct.pack(">I", len(data) - 4) + compact(AWKWARD).encode()
    assert decode_body(data[4:]) == AWKWARD


def test_a_message_the_c_encoder_returns_in_chunks_round_trips() -> None:
    # Past ~100 000 pieces the C encoder hands back several chunks, not one.
    message = {"numbers": list(range(200_000))}
    assert decode_all(encode_frame(message)) == [message]


# --- requests: exactly what each refusal says ------------------------------------------


class Shown:
    """A value JSON cannot carry, with the repr it is given."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _self_containing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


class Items(list):  # type: ignore[type-arg]
    """A list subclass: JSON writes it as a list, so its insides are checked too."""


ADVICE = "use dict (with str keys), list, tuple, str, int, float, bool or None"

# (command, args, session) -> (error class, error.command, error.path, error.problem)
REFUSED: list[Any] = [
    pytest.param(5, None, None, ArgumentTypeError, None, "command",
                 "command must be a non-empty str, got 5", id="int-command"),
    pytest.param("", None, None, ArgumentTypeError, "", "command",
                 "command must be a non-empty str, got ''", id="empty-command"),
    pytest.param("echo", None, 5, ArgumentTypeError, "echo", "session",
                 "session must be a str or None, got 5", id="int-session"),
    pytest.param("echo", {"x": [1, {1, 2}]}, None, ArgumentTypeError, "echo", 'args["x"][1]',
                 f'args["x"][1] is {{1, 2}} (type set), which JSON cannot carry; {ADVICE}',
                 id="set"),
    pytest.param("echo", [float("nan")], None, ArgumentValueError, "echo", "args[0]",
                 "args[0] is nan, which JSON cannot carry (it has no NaN or Infinity); "
                 "send None or a str instead", id="nan"),
    pytest.param("echo", 10**5000, None, ArgumentValueError, "echo", "args",
                 "args is an int too long to write in decimal; send it as a str",
                 id="long-int"),
    pytest.param("echo", {"k": "ab\ud800"}, None, ArgumentValueError, "echo", 'args["k"]',
                 "args[\"k\"] is a str with a lone surrogate '\\ud800' at index 2, which UTF-8 "
                 "cannot encode; clean the text first", id="surrogate"),
    pytest.param("echo", {"a\ud800": 1}, None, ArgumentValueError, "echo", "args",
                 "args has a key with a lone surrogate '\\ud800' at index 1, which UTF-8 "
                 "cannot encode; clean the text first", id="surrogate-key"),
    pytest.param("echo", {"ok": {1: 2}}, None, ArgumentTypeError, "echo", 'args["ok"]',
                 'args["ok"] has the key 1 (type int), but JSON object keys are strings; '
                 "convert the keys to str or send a list of pairs", id="int-key"),
    pytest.param("echo", Items([{"a": {None: 1}}]), None, ArgumentTypeError, "echo",
                 'args[0]["a"]', 'args[0]["a"] has the key None (type NoneType), but JSON '
                 "object keys are strings; convert the keys to str or send a list of pairs",
                 id="none-key-in-a-list-subclass"),
    pytest.param("echo", _self_containing(), None, ArgumentValueError, "echo", "args[0]",
                 "args[0] is args again (a circular reference), which JSON cannot carry; "
                 "send a tree", id="circular"),
    pytest.param("echo", {"é": [Unshowable()]}, None, ArgumentTypeError, "echo",
                 'args["é"][0]', f'args["é"][0] is <Unshowable object> (type Unshowable), '
                 f"which JSON cannot carry; {ADVICE}", id="unshowable"),
    pytest.param("echo", Shown("x" * 60), None, ArgumentTypeError, "echo", "args",
                 f"args is {'x' * 60} (type Shown), which JSON cannot carry; {ADVICE}",
                 id="repr-of-60-in-full"),
    pytest.param("echo", Shown("x" * 61), None, ArgumentTypeError, "echo", "args",
                 f"args is {'x' * 57}... (type Shown), which JSON cannot carry; {ADVICE}",
                 id="repr-of-61-cut"),
]


@pytest.mark.parametrize(("command", "args", "session", "error", "named", "path", "problem"),
                         REFUSED)
def test_a_refused_request_says_what_where_and_what_to_do(
    command: Any, args: Any, session: Any, error: type[Exception], named: str | None,
    path: str, problem: str,
) -> None:
    with pytest.raises(error) as info:
        protocol.encode_request(1, command, args, session)
    refused = info.value
    assert type(refused) is error
    assert (refused.command, refused.path, refused.problem) == (named, path, problem)  # type: ignore[attr-defined]


def test_a_request_too_deep_to_encode_names_args() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ArgumentValueError) as info:
        protocol.encode_request(1, "echo", deep, None)
    assert (info.value.command, info.value.path, info.value.problem) == (  # type: ignore[attr-defined]
        "echo", "args", "args is nested too deeply to encode; flatten it")


def test_a_request_too_large_names_its_command() -> None:
    with pytest.raises(RequestTooLarge) as info:
        protocol.encode_request(1, "echo", "x" * 100, None, max_frame_size=50)
    assert info.value.command == "echo"


def test_a_large_request_the_encoder_returns_in_chunks_round_trips() -> None:
    args = list(range(200_000))
    assert parse_request(decode_all(protocol.encode_request(9, "sum", args, None))[0]).args \
        == args


def test_keys_are_checked_inside_list_and_tuple_subclasses() -> None:
    assert not protocol.keys_are_strings(Items([1, {"a": {2: 3}}]))
    assert protocol.keys_are_strings(Items([1, {"a": {"b": 3}}]))
    assert not protocol.keys_are_strings(("x", [{4: 5}]))


def test_find_unencodable_says_whether_it_is_the_type_or_the_value() -> None:
    assert protocol.find_unencodable(["ab\ud800"], "r") == (
        "r[0]", False, "r[0] is a str with a lone surrogate '\\ud800' at index 2, which UTF-8 "
        "cannot encode; clean the text first")
    assert protocol.find_unencodable({"n": 10**5000}, "r") == (
        'r["n"]', False, 'r["n"] is an int too long to write in decimal; send it as a str')
    assert protocol.find_unencodable(_self_containing(), "r") == (
        "r[0]", False, "r[0] is r again (a circular reference), which JSON cannot carry; "
        "send a tree")
    assert protocol.find_unencodable({"\udc00": 1}, "r") == (
        "r", False, "r has a key with a lone surrogate '\\udc00' at index 0, which UTF-8 "
        "cannot encode; clean the text first")
    assert protocol.find_unencodable({"ok": [b"x"]}, "r") == (
        'r["ok"][0]', True, f"r[\"ok\"][0] is b'x' (type bytes), which JSON cannot carry; {ADVICE}")


def test_subclasses_of_json_scalars_are_json() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class Ratio(float):
        pass

    value = {"level": Level.HIGH, "ratio": Ratio(0.5), "items": [Level.HIGH]}
    assert protocol.keys_are_strings(value)
    assert parse_request(decode_all(protocol.encode_request(1, "c", value, None))[0]).args \
        == {"level": 3, "ratio": 0.5, "items": [3]}


def test_args_the_key_walk_cannot_finish_are_refused_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On CPython 3.12+ the C encoder has its own recursion limit, so args can be
    # deep enough to encode but too deep for the (recursive) key check; here that
    # is simulated. Unchecked keys must not be sent: the stack-free walk looks
    # for the bad key, and without one the args are refused as too deep.
    def gives_up(value: Any) -> bool:
        raise RecursionError

    monkeypatch.setattr(protocol, "keys_are_strings", gives_up)
    with pytest.raises(ArgumentTypeError) as info:
        protocol.encode_request(1, "echo", {"a": {1: 2}}, None)
    assert (info.value.command, info.value.path) == ("echo", 'args["a"]')  # type: ignore[attr-defined]
    with pytest.raises(ArgumentValueError) as too_deep:
        protocol.encode_request(1, "echo", {"a": [1]}, None)
    assert (too_deep.value.command, too_deep.value.path, too_deep.value.problem) == (  # type: ignore[attr-defined]
        "echo", "args", "args is nested too deeply to encode; flatten it")


def test_the_lowest_abandon_id_is_one_and_a_request_parser_refuses_abandons() -> None:
    first = parse_incoming({"abandon": 1})
    assert isinstance(first, Abandon) and first.id == 1
    assert error_of(parse_incoming, {"abandon": 0}) == (
        "abandon must name a request id >= 1, got 0")
    assert error_of(parse_request, {"abandon": 2}) == "expected a request, got an abandon frame"


# --- pickle frames (run_sync) ------------------------------------------------------------


@pytest.mark.parametrize("session", [None, "", "s1", "sé\u00e9"])
def test_a_pickle_request_round_trips_through_the_decoder_in_any_chunks(
        session: str | None) -> None:
    payload = bytes(range(256)) * 10
    frame = protocol.encode_pickle_frame(7, protocol.PICKLE_CALL, payload, session, 1 << 20)
    assert int.from_bytes(frame[:4], "big") & protocol.PICKLE_FLAG
    decoder = FrameDecoder(max_pickle_frame_size=1 << 20)
    for i in range(0, len(frame), 13):
        decoder.feed(frame[i:i + 13])
    message = decoder.next_message()
    assert message is not None and decoder.buffered == 0
    request = protocol.parse_incoming(message)
    assert (request.id, request.command, request.session) == (7, protocol.PICKLE_COMMAND,
                                                              session)
    assert isinstance(request.args, protocol.Pickled) and not request.args.raised
    assert bytes(request.args.data) == payload


@pytest.mark.parametrize("kind", [protocol.PICKLE_RESULT, protocol.PICKLE_RAISED])
def test_a_pickle_reply_is_an_ok_response_holding_the_payload(kind: int) -> None:
    frame = protocol.encode_pickle_frame(3, kind, b"payload", None, 1 << 20)
    decoder = FrameDecoder(max_pickle_frame_size=1 << 20)
    decoder.feed(frame)
    response = protocol.parse_response(decoder.next_message())
    assert response.ok and response.id == 3
    assert bytes(response.result.data) == b"payload"
    assert response.result.raised is (kind == protocol.PICKLE_RAISED)


def test_a_json_only_decoder_refuses_a_pickle_frame_at_its_header() -> None:
    frame = protocol.encode_pickle_frame(1, protocol.PICKLE_CALL, b"x", None, 1 << 20)
    with pytest.raises(ProtocolError, match="pickle frame, which this side does not accept"):
        FrameDecoder().feed(frame[:4])


def test_a_pickle_frame_over_the_limit_is_refused_at_its_header_and_when_encoded() -> None:
    frame = protocol.encode_pickle_frame(1, protocol.PICKLE_CALL, b"x" * 2000, None, 1 << 20)
    with pytest.raises(ProtocolError, match="max_pickle_frame_size"):
        FrameDecoder(max_pickle_frame_size=1024).feed(frame[:4])
    with pytest.raises(RequestTooLarge, match="max_pickle_frame_size=1024"):
        protocol.encode_pickle_frame(1, protocol.PICKLE_CALL, b"x" * 2000, None, 1024)


@pytest.mark.parametrize("body", [
    b"\x00" * 5,  # shorter than the envelope
    struct.pack(">QBH", 0, 0, 0xFFFF),  # id 0
    struct.pack(">QBH", 1, 9, 0xFFFF),  # unknown kind
    struct.pack(">QBH", 1, 0, 50) + b"ab",  # session longer than the body
])
def test_a_malformed_pickle_envelope_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_pickle_body(body)


def test_the_hello_announces_codecs_only_when_there_are_some() -> None:
    plain = protocol.hello_message("w", 1, "app", [])
    assert "codecs" not in plain["result"]
    assert protocol.parse_hello(plain).codecs == ()
    pickled = protocol.hello_message("w", 1, "app", [], codecs=(protocol.PICKLE_CODEC,))
    assert protocol.parse_hello(pickled).codecs == (protocol.PICKLE_CODEC,)


def test_pickle_frames_back_to_back_and_a_header_written_apart_decode_alike() -> None:
    payload = b"p" * 70_000
    whole = protocol.encode_pickle_frame(5, protocol.PICKLE_RESULT, payload, None, 1 << 20)
    head = protocol.encode_pickle_frame(5, protocol.PICKLE_RESULT, b"", None, 1 << 20,
                                        payload_size=len(payload))
    assert head + payload == whole  # what the worker writes in two parts
    decoder = FrameDecoder(max_pickle_frame_size=1 << 20)
    decoder.feed(whole + whole[:10])  # the next frame's start follows: copied out
    first = decoder.next_message()
    decoder.feed(whole[10:])  # now the buffer holds one frame alone: handed over
    second = decoder.next_message()
    assert first is not None and second is not None and decoder.buffered == 0
    assert bytes(first["result"].data) == bytes(second["result"].data) == payload


def test_an_error_hello_carries_what_the_worker_reported() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_hello(error_response(0, "ImportError", "no module x"))
    assert (info.value.remote_type, info.value.remote_message) == ("ImportError", "no module x")


@pytest.mark.parametrize(("changes", "message"), [
    ({"host": 5}, "hello 'host' must be a string when present"),
    ({"schemas": ["ping"]}, "hello 'schemas' must map command names to schema objects"),
    ({"schemas": {"incr": {}}},
     "hello 'schemas' describes ['incr'], which are not in its 'commands'"),
    ({"codecs": "pickle5"}, "hello 'codecs' must be a list of strings when present"),
    ({"codecs": [5]}, "hello 'codecs' must be a list of strings when present"),
])
def test_a_bad_hello_says_exactly_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_hello(_hello_with(**changes))
    assert str(info.value) == message
