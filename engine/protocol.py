"""Frame codec and message envelopes (design section 3). Pure: no I/O.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON holding one object. A *pickle frame* (``run_sync``, design: the
binary codec) sets the length word's top bit (:data:`PICKLE_FLAG`); its body is
a fixed envelope (request id, kind, session) and a pickle (protocol 5)
payload. Only a side that announced the ``pickle5`` codec (the worker's hello)
or asked for it (the parent's command line) accepts one: to every other decoder
the flagged length is too large, a ProtocolError. Both sides use this module; it imports only the
standard library (json, signal, struct) so a worker starts at the speed of a bare
interpreter.

Every malformed input raises :class:`engine.errors.ProtocolError` saying what was
wrong; no other exception escapes the decoder or the validators.
"""

from __future__ import annotations

import json
import signal
import struct

from engine.errors import ArgumentTypeError, ArgumentValueError, ProtocolError, RequestTooLarge

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
HEADER_SIZE = 4
_HEADER = struct.Struct(">I")
HELLO_ID = 0

#: The length word's top bit: the frame is a pickle frame, not JSON.
PICKLE_FLAG = 1 << 31
#: The codec name a worker that accepts pickle frames announces in its hello.
PICKLE_CODEC = "pickle5"
#: The command a pickle request stands for (an app may not register it).
PICKLE_COMMAND = "engine.run_sync"
#: Large enough for a 100 MB ``bytes`` value each way (and below PICKLE_FLAG).
DEFAULT_MAX_PICKLE_FRAME_SIZE = 1 << 30
# A pickle frame's first bytes, packed at once: the length word (with the
# flag), the request id, the kind and the session's length in bytes
# (NO_SESSION: None).
_PICKLE_HEAD = struct.Struct(">IQBH")
_PICKLE_BODY = struct.Struct(">QBH")  # the same envelope, read from a frame's body
_PICKLE_ENVELOPE = _PICKLE_BODY.size
PICKLE_CALL, PICKLE_RESULT, PICKLE_RAISED = 0, 1, 2
_NO_SESSION = 0xFFFF

#: The error type a worker answers an abandoned request with (design section 8).
CANCELLED = "Cancelled"
#: The signal the parent sends a local worker after writing an abandon frame, so
#: that a running handler is interrupted at once (remote workers notice the
#: frame within the watchdog's interval instead). Reserved by the engine in
#: workers: an app must not install a handler for it.
ABANDON_SIGNAL = signal.SIGUSR2

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _make_fast_encoder() -> Callable[[Any, int], Any]:
    """The C encoder behind ``_encoder``, built once.

    ``JSONEncoder.encode`` builds a new one (and a markers dict) on every call,
    a third of the cost of encoding a small reply. Without markers it keeps no
    state, so one can serve every thread; a circular reference then ends in
    RecursionError instead of ValueError, and :func:`encode_frame` encodes a
    failed message again with ``_encoder`` to report the usual error.
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # None without the _json accelerator
    if make is not None:
        try:
            encode: Callable[[Any, int], Any] = make(
                None, _encoder.default, json.encoder.encode_basestring, None,
                _encoder.key_separator, _encoder.item_separator, False, False, False)
        except TypeError:  # another interpreter's private signature
            pass
        else:
            return encode
    return lambda value, _level: (_encoder.encode(value),)


_fast_encode = _make_fast_encoder()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
# ``JSONDecoder.decode`` matches a whitespace regex at both ends of the
# scanner's run and wraps it in ``raw_decode``; frame bodies written by this
# module have no whitespace, so decode_body calls the scanner (an attribute set
# by ``JSONDecoder.__init__``; ``raw_decode`` if it is ever missing) directly
# and falls back to ``decode`` (which skips whitespace and words the errors)
# only when that scan does not cover the whole body.
_scan_once: Callable[[str, int], tuple[Any, int]] = getattr(
    _decoder, "scan_once", _decoder.raw_decode)


def encode_frame(message: dict[str, Any], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode one JSON object as a frame. Raises ProtocolError if it cannot be sent."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must hold a JSON object, not {type(message).__name__}")
    try:
        body = "".join(_fast_encode(message, 0)).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        body = _encode_or_explain(message)
    size = len(body)
    if size > max_frame_size:
        raise ProtocolError(
            f"frame of {size} bytes exceeds max_frame_size={max_frame_size}; "
            "send less data per call or raise max_frame_size"
        )
    return _HEADER.pack(size) + body


def encode_request(request_id: int, command: str, args: Any, session: str | None,
                   max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode a request frame, or raise before anything is sent.

    What the caller passed is checked here, so that a mistake never reaches
    (and never costs) a worker: ``ArgumentTypeError`` (also a ``TypeError``)
    for a value or a dict key JSON cannot carry or a bad command or session,
    ``ArgumentValueError`` (also a ``ValueError``) for NaN, Infinity and the
    like, ``RequestTooLarge`` (also a ``ValueError``) beyond ``max_frame_size``.
    The errors name where the value sits (``args["x"][2]``).
    """
    if type(command) is not str or not command:
        raise _bad_envelope(command, "command", command)
    if session is not None and type(session) is not str:
        raise _bad_envelope(command, "session", session)
    message = {"id": request_id, "command": command, "args": args, "session": session}
    try:
        body = "".join(_fast_encode(message, 0)).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise _argument_error(command, args, exc) from None
    try:
        if type(args) not in SCALAR_TYPES and not keys_are_strings(args):
            raise _argument_error(command, args, None)
    except RecursionError as exc:  # as deep as the encoder could go, but not this walk
        raise _argument_error(command, args, exc) from None
    size = len(body)
    if size > max_frame_size:
        raise RequestTooLarge(command=command, size=size, max_frame_size=max_frame_size)
    return _HEADER.pack(size) + body


def _bad_envelope(command: Any, field: str, value: Any) -> ArgumentTypeError:
    what = "a non-empty str" if field == "command" else "a str or None"
    return ArgumentTypeError(f"{field} must be {what}, got {_short_repr(value)}",
                             command=command if isinstance(command, str) else None,
                             path=field)


def _argument_error(command: str, args: Any,
                    exc: BaseException | None) -> ArgumentTypeError | ArgumentValueError:
    found = find_unencodable(args, "args")
    if found is None:  # the encoder failed for a reason the walk does not know
        found = _unexplained("args", exc)
    path, is_type, problem = found
    error_class = ArgumentTypeError if is_type else ArgumentValueError
    return error_class(problem, command=command, path=path)


def _encode_or_explain(message: dict[str, Any]) -> bytes:
    # The standard encoder's error messages say what was wrong (a circular
    # reference, a set, NaN); a lone surrogate fails in .encode("utf-8").
    try:
        return _encoder.encode(message).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"message is not JSON-serialisable ({exc}); send only dict/list/str/int/"
            "float/bool/None"
        ) from None


# --- values JSON cannot carry -------------------------------------------------

# The types of JSON's scalars (exact types: what needs no walk of its insides).
SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))


def keys_are_strings(value: Any) -> bool:
    """True when every dict inside ``value`` has only ``str`` keys.

    The C encoder writes an int, float, bool or None key as a string without a
    word (``{1: 2}`` arrives as ``{"1": 2}``) and offers no switch to refuse
    it, so this walk runs after every successful encoding of a call's args or
    a handler's result. It only descends into containers (scalars cost one
    type lookup) and stops at the first offender; ~0.3 us for a small dict.
    """
    kind = type(value)
    if kind is dict or (kind not in SCALAR_TYPES and isinstance(value, dict)):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                return False
            if type(item) not in SCALAR_TYPES and not keys_are_strings(item):
                return False
    elif kind is list or kind is tuple or (kind not in SCALAR_TYPES
                                           and isinstance(value, list | tuple)):
        for item in value:
            if type(item) not in SCALAR_TYPES and not keys_are_strings(item):
                return False
    return True


_TYPE_ADVICE = "use dict (with str keys), list, tuple, str, int, float, bool or None"


def find_unencodable(value: Any, root: str) -> tuple[str, bool, str] | None:
    """The first part of ``value`` (in encoding order) that a frame cannot carry.

    Returns ``(path, is_type_error, problem)``, e.g. ``('args["x"][2]', True,
    'args["x"][2] is {1, 2} (type set), which JSON cannot carry; use ...')``,
    or None when everything is fine. ``root`` names ``value`` in the path.
    Only the failure paths call this, so it can afford to look at everything;
    it keeps its own stack, so deep nesting cannot exhaust Python's.
    """
    import math

    on_path: dict[int, Any] = {}  # containers being visited -> where: a repeat is a cycle
    # Entries: (value, where) to visit, or (_LEAVE, id) when a container is done;
    # ``where`` is (parent's where, key) or (root,), turned into text on failure.
    stack: list[tuple[Any, Any]] = [(value, (root,))]
    while stack:
        item, where = stack.pop()
        if item is _LEAVE:
            del on_path[where]
            continue
        if isinstance(item, str):
            bad = _unencodable_text(item)
            if bad is not None:
                return _problem(where, False, f"is a str with {bad}, which UTF-8 cannot "
                                "encode; clean the text first")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            try:
                int.__repr__(item)
            except ValueError:  # longer than sys.get_int_max_str_digits()
                return _problem(where, False, "is an int too long to write in decimal; "
                                "send it as a str")
        elif isinstance(item, float):
            if not math.isfinite(item):
                return _problem(where, False, f"is {item!r}, which JSON cannot carry (it has "
                                "no NaN or Infinity); send None or a str instead")
        elif isinstance(item, dict | list | tuple):
            if id(item) in on_path:
                return _problem(where, False, f"is {_path_text(on_path[id(item)])} again (a "
                                "circular reference), which JSON cannot carry; send a tree")
            on_path[id(item)] = where
            stack.append((_LEAVE, id(item)))
            children: list[tuple[Any, Any]] = []
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return _problem(where, True, f"has the key {_short_repr(key)} (type "
                                        f"{type(key).__name__}), but JSON object keys are "
                                        "strings; convert the keys to str or send a list "
                                        "of pairs")
                    bad = _unencodable_text(key)
                    if bad is not None:
                        return _problem(where, False, f"has a key with {bad}, which UTF-8 "
                                        "cannot encode; clean the text first")
                    children.append((child, (where, key)))
            else:
                children.extend((child, (where, index)) for index, child in enumerate(item))
            stack.extend(reversed(children))
        else:
            return _problem(where, True, f"is {_short_repr(item)} (type "
                            f"{type(item).__name__}), which JSON cannot carry; {_TYPE_ADVICE}")
    return None


_LEAVE = object()


def _unexplained(root: str, exc: BaseException | None) -> tuple[str, bool, str]:
    if isinstance(exc, RecursionError):
        return root, False, f"{root} is nested too deeply to encode; flatten it"
    return root, isinstance(exc, TypeError), f"{root} cannot be encoded as JSON ({exc})"


def _problem(where: Any, is_type: bool, what: str) -> tuple[str, bool, str]:
    path = _path_text(where)
    return path, is_type, f"{path} {what}"


def _path_text(where: Any) -> str:
    parts: list[str] = []
    while len(where) == 2:
        where, key = where
        parts.append(f"[{json.dumps(key, ensure_ascii=False)}]" if isinstance(key, str)
                     else f"[{key}]")
    parts.append(where[0])
    return "".join(reversed(parts))


def _unencodable_text(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate {text[exc.start]!r} at index {exc.start}"
    return None


def _short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real problem
        return f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class FrameDecoder:
    """Incremental decoder: feed bytes in chunks of any size, pull whole messages.

    The length prefix is checked against ``max_frame_size`` as soon as its four
    bytes arrive, before any body is buffered, so a hostile length cannot make
    us allocate.
    """

    __slots__ = ("_buffer", "_expected", "_pickled", "max_frame_size", "max_pickle_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 max_pickle_frame_size: int = 0) -> None:
        """``max_pickle_frame_size``: 0 refuses pickle frames (a ProtocolError)."""
        if max_frame_size < 2:
            raise ValueError("max_frame_size must be at least 2 bytes")
        self.max_frame_size = max_frame_size
        self.max_pickle_frame_size = max_pickle_frame_size
        self._buffer = bytearray()
        self._expected: int | None = None
        self._pickled = False

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
            self._pickled = False
            limit = self.max_pickle_frame_size
            if length & PICKLE_FLAG and limit:
                length ^= PICKLE_FLAG
                if length > limit or length < _PICKLE_ENVELOPE:
                    self._buffer.clear()
                    raise ProtocolError(
                        f"pickle frame length {length} is outside {_PICKLE_ENVELOPE}.."
                        f"{limit} (max_pickle_frame_size); send less data per call or "
                        "raise max_pickle_frame_size")
                self._pickled = True
                self._expected = length
                return
            if length > self.max_frame_size:
                self._buffer.clear()
                hint = " (or a pickle frame, which this side does not accept)" \
                    if length & PICKLE_FLAG else ""
                raise ProtocolError(
                    f"frame length {length} exceeds max_frame_size={self.max_frame_size}; "
                    f"the peer sent an oversized frame or garbage{hint}"
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
        end = HEADER_SIZE + expected
        self._expected = None
        if self._pickled:
            if len(self._buffer) == end:
                # The buffer holds this frame alone (a large run_sync value, as
                # a rule): hand it over as a view instead of copying megabytes.
                view = memoryview(self._buffer)[HEADER_SIZE:]
                self._buffer = bytearray()
                return decode_pickle_body(view)
            body = self._buffer[HEADER_SIZE:end]
            del self._buffer[:end]
            return decode_pickle_body(body)
        body = self._buffer[HEADER_SIZE:end]  # one copy; decode_body takes a bytearray
        del self._buffer[:end]
        # The next header is checked on the next call, so a good frame is never
        # lost because garbage follows it.
        return decode_body(body)

    def messages(self) -> Iterator[dict[str, Any]]:
        """Yield every whole message currently buffered."""
        while (message := self.next_message()) is not None:
            yield message


def decode_body(body: bytes | bytearray) -> dict[str, Any]:
    """Decode one frame body into a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame body is not valid UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(text):  # an error, or only whitespace around the value
        value = _decode_or_explain(text)
    if not isinstance(value, dict):
        raise ProtocolError(f"frame must hold a JSON object, got {type(value).__name__}")
    return value


def _decode_or_explain(text: str) -> Any:
    # The slow path: surrounding whitespace is fine, anything else is an error
    # worded by json itself.
    try:
        return _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        snippet = text[:60]
        raise ProtocolError(f"frame body is not valid JSON ({exc}): {snippet!r}") from None


# --- pickle frames (run_sync) --------------------------------------------------


class Pickled:
    """A pickle frame's payload, not unpickled yet: unpickling runs code, so the
    reader decides when (and catches what it raises). As a request's ``args``
    it is a call to run; as a reply's ``result``, the call's value, or what it
    raised when ``raised`` is set. JSON never decodes to one, so a handler can
    tell a pickle request from a JSON one naming the same command.

    ``finish_on_cancel`` (a request's, parent side only): once written, the
    call is not given up when its caller is cancelled; it completes (see
    ``FramedChannel``), as ``run_sync`` promises by default."""

    __slots__ = ("data", "finish_on_cancel", "raised")

    def __init__(self, data: bytes | bytearray | memoryview, raised: bool = False) -> None:
        self.data = data
        self.raised = raised
        self.finish_on_cancel = False

    def __repr__(self) -> str:
        return f"Pickled({len(self.data)} bytes{', raised' if self.raised else ''})"


def encode_pickle_frame(request_id: int, kind: int, payload: bytes, session: str | None,
                        max_size: int, payload_size: int | None = None) -> bytes:
    """A pickle frame (kind PICKLE_CALL, PICKLE_RESULT or PICKLE_RAISED); raises
    RequestTooLarge (a ValueError) beyond ``max_size`` bytes of body.

    ``payload_size``: encode only the frame's start (header, envelope,
    session) for a payload of that many bytes, which the caller writes right
    after it (no copy of a large payload)."""
    name = b"" if session is None else session.encode("utf-8", "surrogatepass")
    size = _PICKLE_ENVELOPE + len(name) + (len(payload) if payload_size is None
                                           else payload_size)
    if size > max_size or len(name) >= _NO_SESSION:
        raise RequestTooLarge(command=PICKLE_COMMAND, size=size, max_frame_size=max_size,
                              setting="max_pickle_frame_size")
    head = _PICKLE_HEAD.pack(size | PICKLE_FLAG, request_id, kind,
                             _NO_SESSION if session is None else len(name))
    return b"".join((head, name, payload)) if name else head + payload


def decode_pickle_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A pickle frame's body as a message: a request (``command`` is
    PICKLE_COMMAND, ``args`` a Pickled) or a reply (``ok``, ``result`` a
    Pickled). The payload is a view of ``body``: nothing is copied."""
    if len(body) < _PICKLE_ENVELOPE:
        raise ProtocolError(f"pickle frame of {len(body)} bytes is shorter than its envelope")
    rid, kind, name_size = _PICKLE_BODY.unpack_from(body, 0)
    start = _PICKLE_ENVELOPE + (0 if name_size == _NO_SESSION else name_size)
    if rid < 1 or kind > PICKLE_RAISED or start > len(body):
        raise ProtocolError(f"malformed pickle frame envelope (id {rid}, kind {kind})")
    payload = memoryview(body)[start:]
    if kind != PICKLE_CALL:
        return {"id": rid, "ok": True, "result": Pickled(payload, kind == PICKLE_RAISED)}
    session = None
    if name_size != _NO_SESSION:
        try:
            session = bytes(body[_PICKLE_ENVELOPE:start]).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ProtocolError("pickle frame session is not UTF-8") from None
    return {"id": rid, "command": PICKLE_COMMAND, "args": Pickled(payload), "session": session}


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


class Abandon:
    """The parent gave up on request ``id`` (cancelled or timed out): the worker
    interrupts its handler if it is running, answers it with a ``Cancelled``
    error if it has not started, and ignores this if it was answered already.
    On the wire: ``{"abandon": id}``; it gets no reply of its own, so every
    request still gets exactly one reply."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id

    def __repr__(self) -> str:
        return f"Abandon(id={self.id})"


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
    """The worker's first message. ``host`` is the node name of the machine it
    runs on (``os.uname().nodename`` there), None from a worker that does not
    say; its ``pid`` is a process of that machine. ``schemas`` maps a command to
    the shape of its arguments as the app declared it
    (:mod:`engine.workers.schema`); empty when none is declared, and absent
    from the hellos of workers that predate it."""

    __slots__ = ("app", "codecs", "commands", "host", "pid", "protocol", "schemas", "worker_id")

    def __init__(self, protocol: int, worker_id: str, pid: int, app: str,
                 commands: list[str], host: str | None = None,
                 schemas: dict[str, Any] | None = None,
                 codecs: tuple[str, ...] = ()) -> None:
        self.protocol = protocol
        self.worker_id = worker_id
        self.pid = pid
        self.app = app
        self.commands = commands
        self.host = host
        self.schemas: dict[str, Any] = schemas or {}
        #: Codecs besides JSON the worker accepts (PICKLE_CODEC: run_sync).
        self.codecs = codecs

    def to_result(self) -> dict[str, Any]:
        result = {"protocol": self.protocol, "worker_id": self.worker_id, "pid": self.pid,
                  "app": self.app, "commands": list(self.commands)}
        if self.host is not None:
            result["host"] = self.host
        if self.schemas:
            result["schemas"] = dict(self.schemas)
        if self.codecs:
            result["codecs"] = list(self.codecs)
        return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def make_request(id: int, command: str, args: Any = None, session: str | None = None) \
        -> dict[str, Any]:
    return {"id": id, "command": command, "args": args, "session": session}


def ok_response(id: int, result: Any) -> dict[str, Any]:
    return {"id": id, "ok": True, "result": result}


def abandon_message(id: int) -> dict[str, Any]:
    return {"abandon": id}


def error_response(id: int, type: str, message: str, traceback: str | None = None) \
        -> dict[str, Any]:
    return {"id": id, "ok": False,
            "error": {"type": type, "message": message, "traceback": traceback}}


def hello_message(worker_id: str, pid: int, app: str, commands: list[str],
                  host: str | None = None,
                  schemas: dict[str, Any] | None = None,
                  codecs: tuple[str, ...] = ()) -> dict[str, Any]:
    return ok_response(HELLO_ID, Hello(PROTOCOL_VERSION, worker_id, pid, app,
                                       commands, host, schemas, codecs).to_result())


def parse_request(message: Any) -> Request:
    """Validate a request envelope."""
    request = parse_incoming(message)
    if type(request) is not Request:
        raise ProtocolError("expected a request, got an abandon frame")
    return request


def parse_incoming(message: Any) -> Request | Abandon:
    """Validate what a worker reads: a request, or an abandon (worker side)."""
    if not isinstance(message, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(message).__name__}")
    if "id" not in message or "command" not in message:
        if "abandon" in message and len(message) == 1:
            return _parse_abandon(message["abandon"])
        missing = [k for k in ("id", "command") if k not in message]
        raise ProtocolError(f"request is missing {', '.join(missing)}")
    rid = message["id"]
    if (type(rid) is not int and not _is_int(rid)) or rid < 1:  # type(): skips a call
        raise ProtocolError(f"request id must be an integer >= 1, got {rid!r}")
    command = message["command"]
    if not isinstance(command, str) or not command:
        raise ProtocolError(f"request command must be a non-empty string, got {command!r}")
    session = message.get("session")
    if session is not None and not isinstance(session, str):
        raise ProtocolError(f"request session must be a string or null, got {session!r}")
    return Request(rid, command, message.get("args"), session)


def _parse_abandon(rid: Any) -> Abandon:
    if not _is_int(rid) or rid < 1:
        raise ProtocolError(f"abandon must name a request id >= 1, got {rid!r}")
    return Abandon(rid)


def parse_response(message: Any) -> Response:
    """Validate a response envelope (parent side)."""
    if not isinstance(message, dict):
        raise ProtocolError(f"response must be a JSON object, got {type(message).__name__}")
    if "id" not in message or "ok" not in message:
        # key=str: a dict from a Python caller may mix key types, which sorted()
        # alone would turn into a TypeError.
        keys = sorted(message, key=str)[:8]
        raise ProtocolError(f"response lacks 'id' or 'ok': keys are {keys}")
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
            f"worker reported a start failure: {response.error.type}: {response.error.message}",
            remote_type=response.error.type, remote_message=response.error.message,
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
    host = result.get("host")
    if host is not None and not isinstance(host, str):
        raise ProtocolError("hello 'host' must be a string when present")
    schemas = result.get("schemas", {})
    # Only the envelope is checked here: the worker checked the vocabulary
    # when the app registered it, and the test kit checks it again on use.
    if not isinstance(schemas, dict) or not all(
            isinstance(name, str) and isinstance(shape, dict) for name, shape in schemas.items()):
        raise ProtocolError("hello 'schemas' must map command names to schema objects")
    undeclared = sorted(set(schemas) - set(commands))
    if undeclared:
        raise ProtocolError(f"hello 'schemas' describes {undeclared}, which are not in its "
                            "'commands'")
    codecs = result.get("codecs", [])
    if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
        raise ProtocolError("hello 'codecs' must be a list of strings when present")
    return Hello(protocol, worker_id, pid, app, commands, host, schemas, tuple(codecs))
