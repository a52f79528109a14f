"""Argument shapes an app declares (engine.workers.schema) and the strategies
the test kit draws from them (engine.testing.strategies.from_schema)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.testing.strategies import from_schema
from engine.workers import programs
from engine.workers.app import App
from engine.workers.schema import check_schema

pytestmark = pytest.mark.layer1

INCR = {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 5}},
        "required": ["n"]}
SHAPES: list[Any] = [
    {},
    {"type": "null"},
    {"type": "boolean"},
    {"type": "integer", "minimum": 2, "maximum": 9},
    {"type": "number", "minimum": -1.5, "maximum": 1e6},
    {"type": "string", "minLength": 2, "maxLength": 4},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    {"enum": ["a", 1, None]},
    {"const": {"k": [1]}},
    {"anyOf": [{"type": "null"}, INCR]},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "number"}},
                                      "tag": {"type": "string", "description": "a label"}},
     "required": ["xs"], "additionalProperties": False},
    INCR,
    *programs.app.schemas().values(),
]


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A reference reading of the vocabulary, independent of the strategy."""
    if "enum" in schema:
        return value in schema["enum"]
    if "const" in schema:
        return bool(value == schema["const"])
    if "anyOf" in schema:
        return any(conforms(value, choice) for choice in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        json.dumps(value, allow_nan=False)  # any JSON value: it must encode
        return True
    checks = {
        "null": value is None, "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str), "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    if not checks[kind]:
        return False
    if kind in ("integer", "number"):
        return schema.get("minimum", value) <= value <= schema.get("maximum", value)
    if kind in ("string", "array"):
        low, high = ("minLength", "maxLength") if kind == "string" else ("minItems", "maxItems")
        if not schema.get(low, 0) <= len(value) <= schema.get(high, len(value)):
            return False
        return kind == "string" or all(conforms(v, schema.get("items", {})) for v in value)
    if kind == "object":
        properties = schema.get("properties", {})
        return set(schema.get("required", [])) <= set(value) and all(
            name in properties and conforms(v, properties[name]) for name, v in value.items())
    return True


@pytest.mark.parametrize("schema", SHAPES)
def test_every_drawn_value_has_the_declared_shape_and_encodes(schema: Any) -> None:
    check_schema(schema)

    @settings(max_examples=60, deadline=None)
    @given(from_schema(schema))
    def drawn(value: Any) -> None:
        assert conforms(value, schema), value
        json.dumps(value, allow_nan=False)

    drawn()


@given(st.data())
@settings(max_examples=50, deadline=None)
def test_required_properties_are_always_drawn(data: st.DataObject) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "null"}, "b": {"type": "null"}},
              "required": ["a"]}
    seen = [data.draw(from_schema(schema)) for _ in range(20)]
    assert all("a" in v for v in seen)


@pytest.mark.parametrize(("schema", "match"), [
    ([1], "args: a schema is an object"),
    ({"type": "int"}, "args.type must be one of"),
    ({"type": "integer", "maximun": 3}, r"\['maximun'\] are not understood for type 'integer'"),
    ({"type": "integer", "minimum": 3, "maximum": 1}, "minimum 3 is above maximum 1"),
    ({"type": "number", "maximum": float("nan")}, "maximum must be a finite number"),
    ({"type": "string", "maxLength": -1}, "maxLength must be an integer >= 0"),
    ({"type": "array", "items": {"type": "list"}}, r"args.items.type must be one of"),
    ({"type": "object", "properties": {"n": {"type": "integer", "min": 0}}},
     r"args.properties.n: keyword\(s\) \['min'\]"),
    ({"type": "object", "properties": {}, "required": ["n"]}, "not in properties"),
    ({"type": "object", "additionalProperties": {}}, "must be true or false"),
    ({"enum": []}, "enum must be a non-empty list"),
    ({"anyOf": [{"type": "null"}, 3]}, r"args.anyOf\[1\]: a schema is an object"),
    ({"enum": [1], "type": "integer"}, "'enum' stands alone"),
    ({"description": 3}, "description must be a string"),
])
def test_outside_the_vocabulary_is_refused_with_its_path(schema: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_schema(schema)
    with pytest.raises(ValueError, match=match):
        from_schema(schema)


def test_an_app_declares_shapes_and_a_bad_one_fails_at_registration() -> None:
    app = App("shapes")

    @app.command("incr", args=INCR)
    def incr(args: Any, ctx: Any) -> Any:
        return args["n"]

    app.add_command("plain", lambda args, ctx: None)
    assert app.schemas() == {"incr": INCR}  # undeclared commands are absent
    with pytest.raises(ValueError, match=r"command 'bad' args\.type must be one of"):
        app.add_command("bad", lambda args, ctx: None, args={"type": "int"})
    assert "bad" not in app.commands()


def test_the_default_app_declares_every_command() -> None:
    assert set(programs.app.schemas()) == set(programs.app.commands())
