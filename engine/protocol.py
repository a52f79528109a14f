"""Frame codec and message envelopes (design section 3). Pure: no I/O.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON holding one object. Both sides use this module; it imports only the
standard library (json, struct) so a worker starts at the speed of a bare
interpreter.

Every malformed input raises :class:`engine.errors.ProtocolError` saying what was
wrong; no other exception escapes the decoder or the validators.
"""

from __future__ import annotations

import json
import struct

from engine.errors import ProtocolError

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
HEADER_SIZE = 4
_HEADER = struct.Struct(">I")
HELLO_ID = 0

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def encode_frame(message: dict[str, Any], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode one JSON object as a frame. Raises ProtocolError if it cannot be sent."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must hold a JSON object, not {type(message).__name__}")
    try:
        body = _encoder.encode(message).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"message is not JSON-serialisable ({exc}); send only dict/list/str/int/"
            "float/bool/None"
        ) from None
    if len(body) > max_frame_size:
        raise ProtocolError(
            f"frame of {len(body)} bytes exceeds max_frame_size={max_frame_size}; "
            "send less data per call or raise max_frame_size"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes in chunks of any size, pull whole messages.

    The length prefix is checked against ``max_frame_size`` as soon as its four
    bytes arrive, before any body is buffered, so a hostile length cannot make
    us allocate.
    """

    __slots__ = ("_buffer", "_expected", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 2:
            raise ValueError("max_frame_size must be at least 2 bytes")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._expected: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data
        self._check_header()

    def _check_header(self) -> None:
        if self._expected is None and len(self._buffer) >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(self._buffer, 0)
            if length > self.max_frame_size:
                self._buffer.clear()
                raise ProtocolError(
                    f"frame length {length} exceeds max_frame_size={self.max_frame_size}; "
                    "the peer sent an oversized frame or garbage"
                )
            if length == 0:
                self._buffer.clear()
                raise ProtocolError("empty frame (length 0); a frame must hold a JSON object")
            self._expected = length

    def next_message(self) -> dict[str, Any] | None:
        """Return the next whole message, or None if more bytes are needed."""
        if self._expected is None:
            self._check_header()
        expected = self._expected
        if expected is None or len(self._buffer) < HEADER_SIZE + expected:
            return None
        body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + expected])
        del self._buffer[: HEADER_SIZE + expected]
        # The next header is checked on the next call, so a good frame is never
        # lost because garbage follows it.
        self._expected = None
        return decode_body(body)

    def messages(self) -> Iterator[dict[str, Any]]:
        """Yield every whole message currently buffered."""
        while (message := self.next_message()) is not None:
            yield message


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame body is not valid UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    try:
        value = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        snippet = text[:60]
        raise ProtocolError(f"frame body is not valid JSON ({exc}): {snippet!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"frame must hold a JSON object, got {type(value).__name__}")
    return value


# --- envelopes ---------------------------------------------------------------


class Request:
    __slots__ = ("args", "command", "id", "session")

    def __init__(self, id: int, command: str, args: Any, session: str | None) -> None:
        self.id = id
        self.command = command
        self.args = args
        self.session = session

    def to_message(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "args": self.args,
                "session": self.session}

    def __repr__(self) -> str:
        return f"Request(id={self.id}, command={self.command!r}, session={self.session!r})"


class RemoteFailure:
    """The ``error`` object of an ``ok: false`` response."""

    __slots__ = ("message", "traceback", "type")

    def __init__(self, type: str, message: str, traceback: str | None) -> None:
        self.type = type
        self.message = message
        self.traceback = traceback


class Response:
    __slots__ = ("error", "id", "ok", "result")

    def __init__(self, id: int, ok: bool, result: Any = None,
                 error: RemoteFailure | None = None) -> None:
        self.id = id
        self.ok = ok
        self.result = result
        self.error = error

    def __repr__(self) -> str:
        return f"Response(id={self.id}, ok={self.ok})"


class Hello:
    __slots__ = ("app", "commands", "pid", "protocol", "worker_id")

    def __init__(self, protocol: int, worker_id: str, pid: int, app: str,
                 commands: list[str]) -> None:
        self.protocol = protocol
        self.worker_id = worker_id
        self.pid = pid
        self.app = app
        self.commands = commands

    def to_result(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "worker_id": self.worker_id, "pid": self.pid,
                "app": self.app, "commands": list(self.commands)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def make_request(id: int, command: str, args: Any = None, session: str | None = None) \
        -> dict[str, Any]:
    return {"id": id, "command": command, "args": args, "session": session}


def ok_response(id: int, result: Any) -> dict[str, Any]:
    return {"id": id, "ok": True, "result": result}


def error_response(id: int, type: str, message: str, traceback: str | None = None) \
        -> dict[str, Any]:
    return {"id": id, "ok": False,
            "error": {"type": type, "message": message, "traceback": traceback}}


def hello_message(worker_id: str, pid: int, app: str, commands: list[str]) -> dict[str, Any]:
    return ok_response(HELLO_ID, Hello(PROTOCOL_VERSION, worker_id, pid, app,
                                       commands).to_result())


def parse_request(message: Any) -> Request:
    """Validate a request envelope (worker side)."""
    if not isinstance(message, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(message).__name__}")
    missing = [k for k in ("id", "command") if k not in message]
    if missing:
        raise ProtocolError(f"request is missing {', '.join(missing)}")
    rid = message["id"]
    if not _is_int(rid) or rid < 1:
        raise ProtocolError(f"request id must be an integer >= 1, got {rid!r}")
    command = message["command"]
    if not isinstance(command, str) or not command:
        raise ProtocolError(f"request command must be a non-empty string, got {command!r}")
    session = message.get("session")
    if session is not None and not isinstance(session, str):
        raise ProtocolError(f"request session must be a string or null, got {session!r}")
    return Request(rid, command, message.get("args"), session)


def parse_response(message: Any) -> Response:
    """Validate a response envelope (parent side)."""
    if not isinstance(message, dict):
        raise ProtocolError(f"response must be a JSON object, got {type(message).__name__}")
    if "id" not in message or "ok" not in message:
        raise ProtocolError(f"response lacks 'id' or 'ok': keys are {sorted(message)[:8]}")
    rid = message["id"]
    if not _is_int(rid) or rid < 0:
        raise ProtocolError(f"response id must be an integer >= 0, got {rid!r}")
    ok = message["ok"]
    if ok is True:
        if "result" not in message:
            raise ProtocolError(f"ok response {rid} lacks 'result'")
        return Response(rid, True, result=message["result"])
    if ok is not False:
        raise ProtocolError(f"response 'ok' must be true or false, got {ok!r}")
    error = message.get("error")
    if not isinstance(error, dict):
        raise ProtocolError(f"error response {rid} needs an 'error' object, got {error!r}")
    etype, emsg, etb = error.get("type"), error.get("message"), error.get("traceback")
    if not isinstance(etype, str) or not isinstance(emsg, str):
        raise ProtocolError(f"error response {rid} needs string 'type' and 'message'")
    if etb is not None and not isinstance(etb, str):
        raise ProtocolError(f"error response {rid} 'traceback' must be a string or null")
    return Response(rid, False, error=RemoteFailure(etype, emsg, etb))


def parse_hello(message: Any) -> Hello:
    """Validate the unsolicited hello a worker sends once it is ready."""
    response = parse_response(message)
    if response.id != HELLO_ID:
        raise ProtocolError(f"expected hello (id 0) first, got a response with id {response.id}")
    if not response.ok:
        assert response.error is not None
        raise ProtocolError(
            f"worker reported a start failure: {response.error.type}: {response.error.message}"
        )
    result = response.result
    if not isinstance(result, dict):
        raise ProtocolError(f"hello result must be an object, got {type(result).__name__}")
    protocol = result.get("protocol")
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"worker speaks protocol {protocol!r}, this parent speaks {PROTOCOL_VERSION}; "
            "run the same engine version on both sides"
        )
    worker_id, pid, app = result.get("worker_id"), result.get("pid"), result.get("app")
    commands = result.get("commands")
    if not isinstance(worker_id, str) or not isinstance(pid, int) or isinstance(pid, bool) \
            or not isinstance(app, str):
        raise ProtocolError("hello needs string worker_id, integer pid and string app")
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise ProtocolError("hello 'commands' must be a list of strings")
    return Hello(protocol, worker_id, pid, app, commands)
