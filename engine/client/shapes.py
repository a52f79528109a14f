"""Response-shape normalisation (design section 11).

Workers answer with arbitrary JSON. The functions here turn one answer into a
typed, frozen value or raise :class:`~engine.errors.ResponseShapeError` naming
the exact problem (which key is missing, which value has the wrong type, where).
They are total over JSON: whatever the answer, the only exception that escapes
is ``ResponseShapeError`` - never ``KeyError``, ``TypeError``,
``AttributeError`` or ``ValueError``. Keep it that way: every access below is
preceded by an ``isinstance`` check, and every value quoted in a message goes
through :func:`_brief`, which cannot fail.

Decisions worth knowing:

* Counts and pids must be real integers: ``True`` is not ``1`` and ``1.0`` is
  not ``1``. JSON encoders that emit ``1.0`` for a count are buggy and we would
  rather say so than guess.
* ``list_programs`` may answer the current map
  ``{"programs": [...], "total_count": n}`` or the legacy bare list (then
  ``total_count`` is its length). In the map, ``total_count`` must equal the
  number of entries: there is no pagination, so a mismatch means a broken
  worker.
* A program needs a non-empty string ``id``; ids within one list are unique.
  ``signature`` and ``handler`` may be absent or ``null``. Other keys of a
  program are kept in ``ProgramInfo.extra``; other keys of the list map, the
  signature, the ping and the execution answers are ignored (forward
  compatibility with newer workers).
* ``ResponseShapeError.what`` names the answer (``"list_programs answer"``),
  ``.problem`` names the path inside it (``programs[2].id``) and what is wrong,
  ``.value`` is the offending part of the answer (the map lacking a key, the
  value of the wrong type, or the whole answer for a count mismatch).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, TypeVar

import attrs

from engine.errors import ResponseShapeError

__all__ = [
    "ExecutionResult",
    "PingInfo",
    "ProgramInfo",
    "ProgramList",
    "Signature",
    "parse_deleted",
    "parse_execution",
    "parse_ping",
    "parse_program_info",
    "parse_program_list",
]

#: Keys of a program map that have their own field; every other key is ``extra``.
PROGRAM_KEYS: Final = frozenset({"id", "signature", "handler"})

_T = TypeVar("_T")


# --- typed values ------------------------------------------------------------


@attrs.frozen
class Signature:
    """The input and output field names of a program."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Render as the worker sends it: ``{"inputs": [...], "outputs": [...]}``."""
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}


def _extra_keys_are_free(_: Any, __: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    # A reserved key in ``extra`` would make ``to_json`` ambiguous (which "id"
    # wins?) and break the parse/render round trip.
    clash = PROGRAM_KEYS.intersection(value)
    if clash:
        raise ValueError(f"ProgramInfo.extra must not contain {sorted(clash)}")


@attrs.frozen
class ProgramInfo:
    """One program as a worker describes it.

    ``extra`` holds the keys of the program map this version does not know;
    treat it as read-only (it is a plain ``dict`` so values stay picklable and
    JSON-serialisable). It takes no part in hashing.
    """

    id: str
    signature: Signature | None = None
    handler: str | None = None
    extra: Mapping[str, Any] = attrs.field(
        factory=dict, hash=False, validator=_extra_keys_are_free
    )

    def to_json(self) -> dict[str, Any]:
        """Render as the worker sends it; absent ``signature``/``handler`` are omitted."""
        out: dict[str, Any] = {"id": self.id}
        if self.signature is not None:
            out["signature"] = self.signature.to_json()
        if self.handler is not None:
            out["handler"] = self.handler
        out.update(self.extra)
        return out


def _count_matches(instance: ProgramList, _: attrs.Attribute[int], value: int) -> None:
    if value != len(instance.programs):
        raise ValueError(
            f"ProgramList.total_count is {value} but there are {len(instance.programs)} programs"
        )


@attrs.frozen
class ProgramList:
    """The answer of ``list_programs``; ``total_count == len(programs)`` always holds."""

    programs: tuple[ProgramInfo, ...]
    total_count: int = attrs.field(
        default=attrs.Factory(lambda self: len(self.programs), takes_self=True),
        validator=_count_matches,
    )

    def to_json(self, *, legacy: bool = False) -> Any:
        """Render as a current worker does (a map) or, with ``legacy``, as a bare list."""
        programs = [program.to_json() for program in self.programs]
        if legacy:
            return programs
        return {"programs": programs, "total_count": self.total_count}


@attrs.frozen
class ExecutionResult:
    """The answer of ``execute_program``: the program's output fields."""

    outputs: Mapping[str, Any] = attrs.field(hash=False)


@attrs.frozen
class PingInfo:
    """The part of a ``ping`` answer every worker sends."""

    pid: int
    worker_id: str


# --- describing values safely ------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 2


def _brief(value: Any) -> str:
    """A short repr of ``value`` that never raises.

    ``repr`` of an int above ~4300 digits raises ``ValueError`` (CPython's
    int-to-str limit), deep nesting can hit the recursion limit, and a foreign
    object's ``__repr__`` may do anything: none of that may turn a shape error
    into a different exception.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<{value.bit_length()}-bit integer>"
    try:
        return _REPR.repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _describe(value: Any) -> str:
    """Name the JSON kind of ``value`` with a hint of its content: 'a boolean (True)'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({_brief(value)})"
    if isinstance(value, float):
        return f"a float ({_brief(value)})"
    if isinstance(value, str):
        return f"a string ({_brief(value)})"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, Mapping):
        return "an empty map" if not value else f"a map with keys {_brief(list(value)[:5])}"
    return f"a {type(value).__name__} ({_brief(value)})"


# --- checks --------------------------------------------------------------------


def _fail(what: str, problem: str, value: Any) -> NoReturn:
    raise ResponseShapeError(what=what, problem=problem, value=value)


def _where(path: str) -> str:
    return path or "the answer"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: Any) -> bool:
    # bool subclasses int; a worker sending true for a count is broken.
    return isinstance(value, int) and not isinstance(value, bool)


def _map(value: Any, what: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(what, f"{_where(path)} must be a map, got {_describe(value)}", value)
    for key in value:
        if not isinstance(key, str):  # only reachable from Python callers, not JSON
            _fail(what, f"{_where(path)} has a non-string key {_brief(key)}", value)
    return value


def _key(mapping: Mapping[str, Any], key: str, what: str, path: str) -> Any:
    if key not in mapping:
        _fail(what, f"missing key {key!r} in {_where(path)}", mapping)
    return mapping[key]


def _list(value: Any, what: str, path: str) -> list[Any] | tuple[Any, ...]:
    # Not Sequence: a str is a Sequence, and "abc" is not a list of programs.
    if not isinstance(value, list | tuple):
        _fail(what, f"{_where(path)} must be a list, got {_describe(value)}", value)
    return value


def _str(value: Any, what: str, path: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str) or (non_empty and not value):
        kind = "a non-empty string" if non_empty else "a string"
        _fail(what, f"{_where(path)} must be {kind}, got {_describe(value)}", value)
    return value


def _count(value: Any, what: str, path: str) -> int:
    if not _is_int(value):
        _fail(what, f"{_where(path)} must be an integer, got {_describe(value)}", value)
    if value < 0:
        _fail(what, f"{_where(path)} is negative ({_brief(value)})", value)
    return int(value)


def _str_tuple(value: Any, what: str, path: str) -> tuple[str, ...]:
    items = _list(value, what, path)
    return tuple(_str(item, what, f"{path}[{i}]") for i, item in enumerate(items))


def _optional(
    mapping: Mapping[str, Any], key: str, parse: Callable[[Any, str, str], _T],
    what: str, path: str,
) -> _T | None:
    """Absent and ``null`` both mean "not given"; anything else must parse."""
    value = mapping.get(key)
    return None if value is None else parse(value, what, _join(path, key))


# --- structured parts ----------------------------------------------------------


def _signature(value: Any, what: str, path: str) -> Signature:
    mapping = _map(value, what, path)
    inputs = _str_tuple(_key(mapping, "inputs", what, path), what, _join(path, "inputs"))
    outputs = _str_tuple(_key(mapping, "outputs", what, path), what, _join(path, "outputs"))
    return Signature(inputs=inputs, outputs=outputs)


def _program(value: Any, what: str, path: str) -> ProgramInfo:
    mapping = _map(value, what, path)
    program_id = _str(_key(mapping, "id", what, path), what, _join(path, "id"), non_empty=True)
    signature = _optional(mapping, "signature", _signature, what, path)
    handler = _optional(mapping, "handler", _str, what, path)
    extra = {key: item for key, item in mapping.items() if key not in PROGRAM_KEYS}
    return ProgramInfo(id=program_id, signature=signature, handler=handler, extra=extra)


def _programs(items: list[Any] | tuple[Any, ...], what: str, path: str) -> tuple[ProgramInfo, ...]:
    programs: list[ProgramInfo] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        program = _program(item, what, f"{path}[{i}]")
        if program.id in first_index:
            _fail(
                what,
                f"{path}[{i}].id {_brief(program.id)} repeats {path}[{first_index[program.id]}].id",
                item,
            )
        first_index[program.id] = i
        programs.append(program)
    return tuple(programs)


# --- public normalisers ------------------------------------------------------


def parse_program_list(answer: Any) -> ProgramList:
    """Normalise a ``list_programs`` answer (the map, or the legacy bare list)."""
    what = "list_programs answer"
    if isinstance(answer, list | tuple):
        programs = _programs(answer, what, "answer")
        return ProgramList(programs=programs, total_count=len(programs))
    if not isinstance(answer, Mapping):
        _fail(
            what,
            "the answer must be a map {'programs': [...], 'total_count': n} or a bare "
            f"list of programs, got {_describe(answer)}",
            answer,
        )
    mapping = _map(answer, what, "")
    items = _list(_key(mapping, "programs", what, ""), what, "programs")
    total = _count(_key(mapping, "total_count", what, ""), what, "total_count")
    # Checked before the entries: a count that disagrees with the list is the
    # structural problem, whatever the entries look like.
    if total != len(items):
        _fail(
            what,
            f"total_count is {_brief(total)} but programs has {len(items)} "
            f"entr{'y' if len(items) == 1 else 'ies'}",
            answer,
        )
    return ProgramList(programs=_programs(items, what, "programs"), total_count=total)


def parse_program_info(answer: Any, *, what: str = "program info") -> ProgramInfo:
    """Normalise one program map (the answer of ``create_program``/``get_program_info``).

    ``what`` names the answer in errors, e.g. ``"get_program_info answer"``.
    """
    return _program(answer, what, "")


def parse_execution(answer: Any) -> ExecutionResult:
    """Normalise an ``execute_program`` answer: ``{"outputs": {name: value, ...}}``."""
    what = "execute_program answer"
    mapping = _map(answer, what, "")
    outputs = _map(_key(mapping, "outputs", what, ""), what, "outputs")
    return ExecutionResult(outputs=dict(outputs))


def parse_ping(answer: Any) -> PingInfo:
    """Normalise a ``ping`` answer: at least ``{"pid": int > 0, "worker_id": str}``."""
    what = "ping answer"
    mapping = _map(answer, what, "")
    pid = _key(mapping, "pid", what, "")
    if not _is_int(pid) or pid <= 0:
        _fail(what, f"pid must be a positive integer, got {_describe(pid)}", pid)
    worker_id = _str(_key(mapping, "worker_id", what, ""), what, "worker_id", non_empty=True)
    return PingInfo(pid=int(pid), worker_id=worker_id)


def parse_deleted(answer: Any) -> bool:
    """Normalise a ``delete_program`` answer: a boolean, or ``{"deleted": bool}``."""
    what = "delete_program answer"
    if isinstance(answer, bool):
        return answer
    if not isinstance(answer, Mapping):
        _fail(
            what,
            f"the answer must be a boolean or a map {{'deleted': bool}}, got {_describe(answer)}",
            answer,
        )
    deleted = _key(_map(answer, what, ""), "deleted", what, "")
    if not isinstance(deleted, bool):
        _fail(what, f"deleted must be a boolean, got {_describe(deleted)}", deleted)
    return deleted
