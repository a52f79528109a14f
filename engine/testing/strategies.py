"""Hypothesis strategies for worker answers (public test kit, design section 12).

Three families:

* arbitrary JSON (:func:`json_values`), biased towards the keys the
  normalisers look for so that random maps reach past the first check;
* valid answers paired with the typed value they must parse to
  (:func:`program_info_answers`, :func:`program_list_answers`, ...), for
  round-trip properties and for fake workers that need plausible replies;
* almost-valid answers (:func:`mutated`, :func:`mismatched_program_list_answers`)
  that break one thing, for error-path properties;
* arguments of the shape an app declared for a command (:func:`from_schema`).

Users can point these at their own normalisers or fake workers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

from engine.client.shapes import (
    PROGRAM_KEYS,
    ExecutionResult,
    PingInfo,
    ProgramInfo,
    ProgramList,
    Signature,
)
from engine.workers.schema import check_schema

__all__ = [
    "ANSWER_KEYS",
    "execution_answers",
    "from_schema",
    "json_scalars",
    "json_values",
    "mismatched_program_list_answers",
    "mutated",
    "ping_answers",
    "program_ids",
    "program_info_answers",
    "program_infos",
    "program_list_answers",
    "program_lists",
    "signatures",
]

_T = TypeVar("_T")

#: Keys the normalisers read; random maps use them often so they get past "missing key".
ANSWER_KEYS = (
    "programs", "total_count", "id", "signature", "inputs", "outputs", "handler",
    "pid", "worker_id", "deleted",
)



def _huge_int(exponent: int) -> int:
    # Past 10**4300, repr() raises ValueError (CPython's int-to-str limit); the
    # strategy holds exponents rather than the ints so that its own repr works.
    magnitude = int(10 ** abs(exponent))
    return magnitude if exponent > 0 else -magnitude


def json_scalars() -> st.SearchStrategy[Any]:
    """null, booleans, integers (huge ones included), finite or infinite floats, strings.

    NaN is left out: it is not equal to itself, so values holding it cannot be
    compared in round-trip properties.
    """
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from([20, -20, 5000, -5000]).map(_huge_int)
        | st.floats(allow_nan=False)
        | st.text()
    )


@functools.cache  # strategies are immutable; _mutate asks for one per node
def json_values(*, max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, lists and string-keyed maps, nested."""
    keys = st.sampled_from(ANSWER_KEYS) | st.text(max_size=8)
    return st.recursive(
        json_scalars(),
        lambda children: (
            st.lists(children, max_size=6)
            | st.dictionaries(keys, children, max_size=6)
        ),
        max_leaves=max_leaves,
    )


def program_ids() -> st.SearchStrategy[str]:
    """Valid program ids: non-empty strings."""
    return st.text(min_size=1, max_size=20)


def signatures() -> st.SearchStrategy[Signature]:
    """Signatures with a few input and output field names."""
    names = st.lists(st.text(max_size=10), max_size=4).map(tuple)
    return st.builds(Signature, inputs=names, outputs=names)


def program_infos(ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[ProgramInfo]:
    """Valid :class:`ProgramInfo` values, with optional signature, handler and extra keys."""
    extra_keys = st.text(max_size=10).filter(lambda key: key not in PROGRAM_KEYS)
    return st.builds(
        ProgramInfo,
        id=ids if ids is not None else program_ids(),
        signature=st.none() | signatures(),
        handler=st.none() | st.text(max_size=10),
        extra=st.dictionaries(extra_keys, json_values(max_leaves=5), max_size=3),
    )


@st.composite
def _rendered_program(draw: st.DrawFn, info: ProgramInfo) -> dict[str, Any]:
    # Absent and null must both parse to None, so render either way.
    rendered = info.to_json()
    if info.signature is None and draw(st.booleans()):
        rendered["signature"] = None
    if info.handler is None and draw(st.booleans()):
        rendered["handler"] = None
    return rendered


def program_info_answers() -> st.SearchStrategy[tuple[ProgramInfo, dict[str, Any]]]:
    """``(expected, answer)``: a program map as a worker sends it and what it parses to."""
    return program_infos().flatmap(
        lambda info: st.tuples(st.just(info), _rendered_program(info))
    )


def program_lists(max_size: int = 5) -> st.SearchStrategy[ProgramList]:
    """Valid :class:`ProgramList` values (unique ids)."""
    return st.lists(
        program_infos(), max_size=max_size, unique_by=lambda info: info.id
    ).map(lambda infos: ProgramList(programs=tuple(infos)))


@st.composite
def program_list_answers(draw: st.DrawFn, max_size: int = 5) -> tuple[ProgramList, Any]:
    """``(expected, answer)``: a ``list_programs`` answer, as the map or as the legacy list."""
    expected = draw(program_lists(max_size))
    rendered = [draw(_rendered_program(info)) for info in expected.programs]
    if draw(st.booleans()):
        return expected, rendered
    return expected, {"programs": rendered, "total_count": len(rendered)}


@st.composite
def mismatched_program_list_answers(draw: st.DrawFn, max_size: int = 5) -> dict[str, Any]:
    """A ``list_programs`` map whose ``total_count`` is a non-negative int != its length."""
    expected = draw(program_lists(max_size))
    n = len(expected.programs)
    wrong = draw(st.integers(min_value=0).filter(lambda count: count != n) | st.just(n + 1))
    answer = expected.to_json()
    answer["total_count"] = wrong
    return dict(answer)


def execution_answers() -> st.SearchStrategy[tuple[ExecutionResult, dict[str, Any]]]:
    """``(expected, answer)`` for ``execute_program``: ``{"outputs": {...}}``."""
    outputs = st.dictionaries(st.text(max_size=10), json_values(max_leaves=5), max_size=4)
    return outputs.map(lambda out: (ExecutionResult(outputs=out), {"outputs": dict(out)}))


def ping_answers() -> st.SearchStrategy[tuple[PingInfo, dict[str, Any]]]:
    """``(expected, answer)`` for ``ping``, with extra keys a worker may add."""
    return st.builds(
        lambda pid, worker_id, extra: (
            PingInfo(pid=pid, worker_id=worker_id),
            {**extra, "pid": pid, "worker_id": worker_id},
        ),
        st.integers(min_value=1, max_value=2**22),
        st.text(min_size=1, max_size=12),
        st.dictionaries(st.text(max_size=8), json_values(max_leaves=3), max_size=3),
    )


@st.composite
def mutated(draw: st.DrawFn, answers: st.SearchStrategy[Any]) -> Any:
    """An answer from ``answers`` with one node replaced by arbitrary JSON or one key dropped.

    Reaches the deep error paths (a bad ``signature.inputs[2]``) that fully
    random JSON almost never does. The result may still happen to be valid.
    """
    answer = draw(answers)
    return _mutate(draw, answer)


def _mutate(draw: st.DrawFn, node: Any) -> Any:
    children = _children(node)
    # Stop here (replace or drop) or descend into one child.
    if not children or draw(st.integers(0, 5)) == 0:
        if isinstance(node, dict) and node and draw(st.booleans()):
            victim = draw(st.sampled_from(sorted(node)))
            return {k: v for k, v in node.items() if k != victim}
        return draw(json_values(max_leaves=5))
    key = draw(st.sampled_from(children))
    return _replace(node, key, lambda child: _mutate(draw, child))


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return sorted(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def _replace(node: Any, key: Any, change: Callable[[Any], _T]) -> Any:
    # Copy on the way down: the drawn answer may be shared with the expected value.
    if isinstance(node, dict):
        return {**node, key: change(node[key])}
    copy = list(node)
    copy[key] = change(copy[key])
    return copy


#: Sizes a schema leaves open are kept small: a campaign wants many calls, not big ones.
_OPEN_MAX_LENGTH = 20
_OPEN_MAX_ITEMS = 6


def from_schema(schema: Any) -> st.SearchStrategy[Any]:
    """Values of the shape ``schema`` describes (:mod:`engine.workers.schema`).

    Required properties are always present, optional ones sometimes, and no
    other key is ever added. Numbers are finite; strings and arrays without a
    maximum are kept short. Raises ``ValueError`` naming the path of anything
    outside the vocabulary.
    """
    check_schema(schema)
    return _strategy(schema)


def _strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of([_strategy(choice) for choice in schema["anyOf"]])
    kind = schema.get("type")
    if kind is None:
        return _any_json()
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=low, max_value=high)
    if kind == "number":
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if kind == "string":
        least = schema.get("minLength", 0)
        return st.text(min_size=least,
                       max_size=schema.get("maxLength", max(least, _OPEN_MAX_LENGTH)))
    if kind == "array":
        least = schema.get("minItems", 0)
        items = _strategy(schema.get("items", {}))
        return st.lists(items, min_size=least,
                        max_size=schema.get("maxItems", max(least, _OPEN_MAX_ITEMS)))
    return _objects(schema)


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    return st.fixed_dictionaries(
        {name: _strategy(sub) for name, sub in properties.items() if name in required},
        optional={name: _strategy(sub) for name, sub in properties.items()
                  if name not in required},
    )


@functools.cache
def _any_json() -> st.SearchStrategy[Any]:
    """Any value a call can send: finite numbers (infinities and NaN are not
    JSON) and integers ``str()`` can print, unlike :func:`json_values`."""
    scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=10,
    )
