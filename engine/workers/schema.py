"""The shape of a command's arguments: a small subset of JSON Schema.

An app declares it next to the handler (``@app.command("incr", args=...)``),
the hello carries it, and the test kit turns it into Hypothesis strategies
(:func:`engine.testing.strategies.from_schema`) so that a campaign calls the
command with arguments it accepts. It is data, not code: this module checks
that a description uses only the vocabulary below and imports nothing beyond
the standard library (it runs in every worker).

The vocabulary, every keyword optional unless said::

    {"type": "null" | "boolean" | "integer" | "number" | "string" | "array" | "object"}
    integer, number: "minimum", "maximum" (inclusive)
    string:          "minLength", "maxLength"
    array:           "items" (a schema), "minItems", "maxItems"
    object:          "properties" ({name: schema}), "required" ([names in properties]),
                     "additionalProperties" (true/false; nothing extra is ever generated)
    any schema:      "enum" ([values]) or "const" (value) instead of "type";
                     "anyOf" ([schemas]) instead of "type"; "description" (text)
    {}               any JSON value (what ``echo`` takes)

Anything else is refused with the path of the offending keyword, so a typo
(``"maximun"``) is found when the app is imported, not by a campaign that
silently ignored it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["TYPES", "check_schema"]

TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

_COMMON = frozenset({"type", "description"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "null": _COMMON,
    "boolean": _COMMON,
    "integer": _COMMON | {"minimum", "maximum"},
    "number": _COMMON | {"minimum", "maximum"},
    "string": _COMMON | {"minLength", "maxLength"},
    "array": _COMMON | {"items", "minItems", "maxItems"},
    "object": _COMMON | {"properties", "required", "additionalProperties"},
}
# A schema without "type" is one of these forms (each alone, plus a description).
_FORMS = ("enum", "const", "anyOf")


def check_schema(schema: Any, where: str = "args") -> None:
    """Raise ``ValueError`` naming the path (``args.properties.n.minimum``) of
    the first thing in ``schema`` outside the vocabulary of this module."""
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a schema is an object such as {{'type': 'integer'}}, "
                         f"got {schema!r}")
    if "description" in schema and not isinstance(schema["description"], str):
        raise ValueError(f"{where}.description must be a string")
    forms = [key for key in _FORMS if key in schema]
    if forms:
        extra = set(schema) - {forms[0], "description"}
        if len(forms) > 1 or extra:
            raise ValueError(f"{where}: {forms[0]!r} stands alone (with an optional "
                             f"'description'), got keys {sorted(schema)}")
        _check_form(forms[0], schema[forms[0]], where)
        return
    if set(schema) <= {"description"}:
        return  # {}: any JSON value
    kind = schema.get("type")
    if kind not in TYPES:
        raise ValueError(f"{where}.type must be one of {', '.join(TYPES)} (or use enum, const "
                         f"or anyOf), got {kind!r}")
    unknown = sorted(set(schema) - _BY_TYPE[kind])
    if unknown:
        raise ValueError(f"{where}: keyword(s) {unknown} are not understood for type {kind!r}; "
                         f"it takes {sorted(_BY_TYPE[kind])}")
    if kind in ("integer", "number"):
        _check_bounds(schema, "minimum", "maximum", where, number=True)
    elif kind == "string":
        _check_bounds(schema, "minLength", "maxLength", where, number=False)
    elif kind == "array":
        _check_bounds(schema, "minItems", "maxItems", where, number=False)
        if "items" in schema:
            check_schema(schema["items"], f"{where}.items")
    elif kind == "object":
        _check_object(schema, where)


def _check_form(form: str, value: Any, where: str) -> None:
    if form == "enum":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}.enum must be a non-empty list of values, got {value!r}")
    elif form == "anyOf":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}.anyOf must be a non-empty list of schemas, got {value!r}")
        for i, choice in enumerate(value):
            check_schema(choice, f"{where}.anyOf[{i}]")


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (not integer and isinstance(value, float)
                                      and value == value and abs(value) != float("inf"))


def _check_bounds(schema: dict[str, Any], low_key: str, high_key: str, where: str,
                  number: bool) -> None:
    low, high = schema.get(low_key), schema.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is None:
            continue
        if not _is_number(value, integer=not number) or (not number and value < 0):
            what = "a finite number" if number else "an integer >= 0"
            raise ValueError(f"{where}.{key} must be {what}, got {value!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{where}: {low_key} {low!r} is above {high_key} {high!r}")


def _check_object(schema: dict[str, Any], where: str) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError(f"{where}.properties must map names to schemas, got {properties!r}")
    for name, sub in properties.items():
        if not isinstance(name, str):
            raise ValueError(f"{where}.properties: names must be strings, got {name!r}")
        check_schema(sub, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        raise ValueError(f"{where}.required must be a list of property names, got {required!r}")
    missing = [name for name in required if name not in properties]
    if missing:
        raise ValueError(f"{where}.required names {missing}, which are not in properties")
    extra = schema.get("additionalProperties", False)
    if not isinstance(extra, bool):
        raise ValueError(f"{where}.additionalProperties must be true or false, got {extra!r}")
