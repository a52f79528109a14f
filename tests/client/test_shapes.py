"""Exact cases of response-shape normalisation (engine.client.shapes)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.client.shapes import (
    ExecutionResult,
    PingInfo,
    ProgramInfo,
    ProgramList,
    Signature,
    parse_deleted,
    parse_execution,
    parse_ping,
    parse_program_info,
    parse_program_list,
)
from engine.errors import ResponseShapeError

pytestmark = pytest.mark.layer1

P1 = {"id": "p1", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"}
P2 = {"id": "p2"}
INFO1 = ProgramInfo(id="p1", signature=Signature(inputs=("a",), outputs=("b",)), handler="echo")
INFO2 = ProgramInfo(id="p2")


def shape_error(parse: Any, answer: Any) -> ResponseShapeError:
    with pytest.raises(ResponseShapeError) as info:
        parse(answer)
    return info.value


# --- accepted shapes ---------------------------------------------------------


def test_map_answer_is_accepted() -> None:
    result = parse_program_list({"programs": [P1, P2], "total_count": 2})
    assert result == ProgramList(programs=(INFO1, INFO2), total_count=2)


def test_legacy_bare_list_is_accepted_with_its_length_as_count() -> None:
    assert parse_program_list([P1, P2]) == ProgramList(programs=(INFO1, INFO2), total_count=2)


def test_empty_map_and_empty_list() -> None:
    assert parse_program_list({"programs": [], "total_count": 0}) == ProgramList(programs=())
    assert parse_program_list([]) == ProgramList(programs=(), total_count=0)


def test_unknown_keys_go_to_extra_and_null_means_absent() -> None:
    answer = {"id": "p", "signature": None, "handler": None, "created_at": 5, "tags": ["x"]}
    info = parse_program_info(answer)
    assert info == ProgramInfo(id="p", extra={"created_at": 5, "tags": ["x"]})
    assert info.to_json() == {"id": "p", "created_at": 5, "tags": ["x"]}


def test_extra_keys_of_the_list_map_are_ignored() -> None:
    answer = {"programs": [P2], "total_count": 1, "next": None}
    assert parse_program_list(answer) == ProgramList(programs=(INFO2,))


def test_to_json_round_trips() -> None:
    programs = ProgramList(programs=(INFO1, INFO2))
    assert parse_program_list(programs.to_json()) == programs
    assert parse_program_list(programs.to_json(legacy=True)) == programs
    assert programs.to_json() == {"programs": [P1, P2], "total_count": 2}


def test_execution_ping_and_delete() -> None:
    assert parse_execution({"outputs": {"b": 1}, "took": 0.1}) == ExecutionResult(outputs={"b": 1})
    assert parse_ping({"pid": 12, "worker_id": "w-1", "app": "x"}) == PingInfo(12, "w-1")
    assert parse_deleted(True) is True
    assert parse_deleted({"deleted": False}) is False


def test_program_list_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="total_count is 3 but there are 1 programs"):
        ProgramList(programs=(INFO2,), total_count=3)
    with pytest.raises(ValueError, match="must not contain"):
        ProgramInfo(id="p", extra={"id": "q"})


# --- exact errors --------------------------------------------------------------

LIST_ERRORS = [
    pytest.param(
        "nope",
        "the answer must be a map {'programs': [...], 'total_count': n} or a bare list of "
        "programs, got a string ('nope')",
        id="string",
    ),
    pytest.param(
        None,
        "the answer must be a map {'programs': [...], 'total_count': n} or a bare list of "
        "programs, got null",
        id="null",
    ),
    pytest.param({"total_count": 0}, "missing key 'programs' in the answer", id="no-programs"),
    pytest.param({"programs": []}, "missing key 'total_count' in the answer", id="no-count"),
    pytest.param(
        {"programs": {}, "total_count": 0}, "programs must be a list, got an empty map",
        id="programs-map",
    ),
    pytest.param(
        {"programs": [], "total_count": False},
        "total_count must be an integer, got a boolean (False)", id="bool-count",
    ),
    pytest.param(
        {"programs": [P2], "total_count": 1.0},
        "total_count must be an integer, got a float (1.0)", id="float-count",
    ),
    pytest.param(
        {"programs": [P2], "total_count": "1"},
        "total_count must be an integer, got a string ('1')", id="string-count",
    ),
    pytest.param(
        {"programs": [], "total_count": -1}, "total_count is negative (-1)", id="negative",
    ),
    pytest.param(
        {"programs": [P1, P2], "total_count": 3},
        "total_count is 3 but programs has 2 entries", id="count-too-high",
    ),
    pytest.param(
        {"programs": [P1], "total_count": 0},
        "total_count is 0 but programs has 1 entry", id="count-too-low",
    ),
    pytest.param(
        {"programs": [], "total_count": 10**5000},
        "total_count is <16610-bit integer> but programs has 0 entries", id="huge-count",
    ),
    pytest.param(
        {"programs": [P1, {"handler": "echo"}], "total_count": 2},
        "missing key 'id' in programs[1]", id="no-id",
    ),
    pytest.param(
        {"programs": [{"id": 7}], "total_count": 1},
        "programs[0].id must be a non-empty string, got an integer (7)", id="int-id",
    ),
    pytest.param(
        {"programs": [{"id": ""}], "total_count": 1},
        "programs[0].id must be a non-empty string, got a string ('')", id="empty-id",
    ),
    pytest.param(
        [P1, "p2"], "answer[1] must be a map, got a string ('p2')", id="legacy-entry-string",
    ),
    pytest.param(
        [P2, P1, P2], "answer[2].id 'p2' repeats answer[0].id", id="duplicate-id",
    ),
    pytest.param(
        [{"id": "p", "signature": ["a"]}],
        "answer[0].signature must be a map, got a list of 1 item", id="signature-list",
    ),
    pytest.param(
        [{"id": "p", "signature": {"inputs": []}}],
        "missing key 'outputs' in answer[0].signature", id="signature-no-outputs",
    ),
    pytest.param(
        [{"id": "p", "signature": {"inputs": ["a", 1], "outputs": []}}],
        "answer[0].signature.inputs[1] must be a string, got an integer (1)",
        id="signature-bad-input",
    ),
    pytest.param(
        [{"id": "p", "signature": {"inputs": [], "outputs": "b"}}],
        "answer[0].signature.outputs must be a list, got a string ('b')",
        id="signature-outputs-string",
    ),
    pytest.param(
        [{"id": "p", "handler": True}],
        "answer[0].handler must be a string, got a boolean (True)", id="bool-handler",
    ),
]


@pytest.mark.parametrize(("answer", "problem"), LIST_ERRORS)
def test_program_list_errors(answer: Any, problem: str) -> None:
    error = shape_error(parse_program_list, answer)
    assert error.what == "list_programs answer"
    assert error.problem == problem
    assert str(error) == f"unexpected shape for list_programs answer: {problem}"


def test_error_value_is_the_offending_part() -> None:
    entry = {"handler": "echo"}
    assert shape_error(parse_program_list, [entry]).value is entry
    answer = {"programs": [], "total_count": 2}
    assert shape_error(parse_program_list, answer).value is answer
    assert shape_error(parse_program_list, [{"id": 3}]).value == 3


@pytest.mark.parametrize(
    ("parse", "answer", "message"),
    [
        (parse_program_info, [], "unexpected shape for program info: the answer must be a map, "
                                 "got a list of 0 items"),
        (parse_program_info, {"id": None},
         "unexpected shape for program info: id must be a non-empty string, got null"),
        (parse_execution, {"result": 1},
         "unexpected shape for execute_program answer: missing key 'outputs' in the answer"),
        (parse_execution, {"outputs": [1]},
         "unexpected shape for execute_program answer: outputs must be a map, got a list of 1 "
         "item"),
        (parse_ping, {"pid": True, "worker_id": "w"},
         "unexpected shape for ping answer: pid must be a positive integer, got a boolean (True)"),
        (parse_ping, {"pid": 0, "worker_id": "w"},
         "unexpected shape for ping answer: pid must be a positive integer, got an integer (0)"),
        (parse_ping, {"pid": 3},
         "unexpected shape for ping answer: missing key 'worker_id' in the answer"),
        (parse_deleted, 1,
         "unexpected shape for delete_program answer: the answer must be a boolean or a map "
         "{'deleted': bool}, got an integer (1)"),
        (parse_deleted, {"deleted": "yes"},
         "unexpected shape for delete_program answer: deleted must be a boolean, got a string "
         "('yes')"),
    ],
)
def test_other_normaliser_errors(parse: Any, answer: Any, message: str) -> None:
    assert str(shape_error(parse, answer)) == message


def test_what_can_name_the_answer() -> None:
    with pytest.raises(ResponseShapeError, match=r"^unexpected shape for get_program_info answer"):
        parse_program_info(3, what="get_program_info answer")


# --- hostile inputs --------------------------------------------------------------


def deeply_nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


# Factories, not values: 20 000-deep lists kept alive for the whole session
# would make every test's gc.collect() (the leak check) slow.
HOSTILE = {
    "nested": lambda: deeply_nested(20_000),
    "nested-programs": lambda: {"programs": deeply_nested(20_000), "total_count": 1},
    "nested-inputs": lambda: {
        "id": "p", "signature": {"inputs": deeply_nested(20_000), "outputs": []},
    },
    "huge-ints": lambda: {
        "outputs": {"x": deeply_nested(10)}, "pid": 10**5000, "worker_id": 10**5000,
    },
    "huge-id": lambda: {"programs": [{"id": 10**5000}], "total_count": 1},
    "int-key": lambda: {1: "non-string key"},
    "inf": lambda: float("inf"),
}


@pytest.mark.parametrize(
    "parse", [parse_program_list, parse_program_info, parse_execution, parse_ping, parse_deleted]
)
@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_answers_give_shape_errors_only(parse: Any, make: Any) -> None:
    try:
        parse(make())
    except ResponseShapeError as error:
        assert str(error).startswith("unexpected shape for ")


def test_huge_int_is_described_without_its_digits() -> None:
    error = shape_error(parse_ping, {"pid": -(10**5000), "worker_id": "w"})
    assert error.problem == "pid must be a positive integer, got an integer (<16610-bit integer>)"


def test_hashable_despite_mapping_fields() -> None:
    assert hash(ProgramInfo(id="p", extra={"k": [1]})) == hash(ProgramInfo(id="p"))
    assert isinstance(hash(ExecutionResult(outputs={"a": [1]})), int)


# --- every error names the answer, the place, the problem and the offending value --------


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


SIX_KEYS = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}
NOT_A_LIST_OF_PROGRAMS = {"programs": "p1", "total_count": 1}
DUPLICATE = {"id": "p1", "handler": "again"}
INT_KEYED = {1: "x"}
SIGNATURE_WITHOUT_INPUTS = {"id": "p", "signature": {"outputs": []}}


# (normaliser, answer, what, problem, the offending value)
EXACT_ERRORS: list[Any] = [
    pytest.param(parse_ping, None, "ping answer", "the answer must be a map, got null", None,
                 id="ping-null"),
    pytest.param(parse_ping, {"worker_id": "w"}, "ping answer",
                 "missing key 'pid' in the answer", "<answer>", id="ping-no-pid"),
    pytest.param(parse_ping, {"pid": -1, "worker_id": "w"}, "ping answer",
                 "pid must be a positive integer, got an integer (-1)", -1, id="ping-negative"),
    pytest.param(parse_ping, {"pid": 3, "worker_id": ""}, "ping answer",
                 "worker_id must be a non-empty string, got a string ('')", "",
                 id="ping-empty-worker-id"),
    pytest.param(parse_ping, {"pid": 3, "worker_id": 5}, "ping answer",
                 "worker_id must be a non-empty string, got an integer (5)", 5,
                 id="ping-int-worker-id"),
    pytest.param(parse_ping, {"pid": -(2**64 - 1), "worker_id": "w"}, "ping answer",
                 f"pid must be a positive integer, got an integer ({-(2**64 - 1)})",
                 -(2**64 - 1), id="ping-64-bit-pid-in-full"),
    pytest.param(parse_ping, {"pid": 2**64 + 0.5, "worker_id": "w"}, "ping answer",
                 f"pid must be a positive integer, got a float ({2**64 + 0.5!r})", 2**64 + 0.5,
                 id="ping-float-pid"),
    pytest.param(parse_execution, 3, "execute_program answer",
                 "the answer must be a map, got an integer (3)", 3, id="execution-int"),
    pytest.param(parse_execution, {}, "execute_program answer",
                 "missing key 'outputs' in the answer", "<answer>", id="execution-no-outputs"),
    pytest.param(parse_execution, Opaque(), "execute_program answer",
                 "the answer must be a map, got a Opaque (<opaque>)", "<answer>",
                 id="execution-foreign-object"),
    # repr() of a huge int inside a tuple raises (CPython's int-to-str limit).
    pytest.param(parse_execution, {(10**5000,): 1}, "execute_program answer",
                 "the answer has a non-string key <unprintable tuple>", "<answer>",
                 id="execution-unprintable-key"),
    pytest.param(parse_execution, {"outputs": ["x"] * 3}, "execute_program answer",
                 "outputs must be a map, got a list of 3 items", ["x"] * 3,
                 id="execution-outputs-list"),
    pytest.param(parse_deleted, {}, "delete_program answer",
                 "missing key 'deleted' in the answer", "<answer>", id="deleted-missing"),
    pytest.param(parse_deleted, [True], "delete_program answer",
                 "the answer must be a boolean or a map {'deleted': bool}, got a list of 1 item",
                 "<answer>", id="deleted-list"),
    pytest.param(parse_deleted, {"deleted": 1}, "delete_program answer",
                 "deleted must be a boolean, got an integer (1)", 1, id="deleted-int"),
    pytest.param(parse_program_info, SIX_KEYS, "program info",
                 "missing key 'id' in the answer", "<answer>", id="info-no-id"),
    pytest.param(parse_program_info, SIGNATURE_WITHOUT_INPUTS, "program info",
                 "missing key 'inputs' in signature", {"outputs": []},
                 id="info-signature-no-inputs"),
    pytest.param(parse_program_list, {"programs": [], "total_count": "0"},
                 "list_programs answer", "total_count must be an integer, got a string ('0')",
                 "0", id="list-string-count"),
    pytest.param(parse_program_list, {"programs": [], "total_count": -2},
                 "list_programs answer", "total_count is negative (-2)", -2,
                 id="list-negative-count"),
    pytest.param(parse_program_list, NOT_A_LIST_OF_PROGRAMS, "list_programs answer",
                 "programs must be a list, got a string ('p1')", "p1", id="list-programs-string"),
    pytest.param(parse_program_list, {"programs": [7], "total_count": 1},
                 "list_programs answer", "programs[0] must be a map, got an integer (7)", 7,
                 id="list-entry-int"),
    pytest.param(parse_program_list, {"programs": [P1, DUPLICATE], "total_count": 2},
                 "list_programs answer", "programs[1].id 'p1' repeats programs[0].id", DUPLICATE,
                 id="list-duplicate"),
    pytest.param(parse_program_list, "x", "list_programs answer",
                 "the answer must be a map {'programs': [...], 'total_count': n} or a bare list "
                 "of programs, got a string ('x')", "<answer>", id="list-string"),
]
# Keys that are not strings only come from Python callers, never from JSON.
EXACT_ERRORS += [
    pytest.param(parse, INT_KEYED, what, "the answer has a non-string key 1", "<answer>",
                 id=f"{what.split()[0]}-int-key")
    for parse, what in [(parse_ping, "ping answer"), (parse_execution, "execute_program answer"),
                        (parse_deleted, "delete_program answer"),
                        (parse_program_info, "program info"),
                        (parse_program_list, "list_programs answer")]
]


EXACT_ERRORS.append(pytest.param(
    parse_execution, {"outputs": INT_KEYED}, "execute_program answer",
    "outputs has a non-string key 1", INT_KEYED, id="execution-outputs-int-key"))


@pytest.mark.parametrize(("parse", "answer", "what", "problem", "value"), EXACT_ERRORS)
def test_exact_errors(parse: Any, answer: Any, what: str, problem: str, value: Any) -> None:
    error = shape_error(parse, answer)
    assert (error.what, error.problem) == (what, problem)
    if isinstance(value, str) and value == "<answer>":
        assert error.value is answer
    else:
        assert type(error.value) is type(value) and error.value == value


def test_a_map_is_described_by_its_first_five_keys() -> None:
    error = shape_error(parse_ping, {"pid": SIX_KEYS, "worker_id": "w"})
    assert error.problem == (
        "pid must be a positive integer, got a map with keys ['a', 'b', 'c', 'd', 'e']")
    assert error.value is not None


def test_integers_wider_than_64_bits_are_described_by_their_size() -> None:
    error = shape_error(parse_ping, {"pid": -(2**64), "worker_id": "w"})
    assert error.problem == "pid must be a positive integer, got an integer (<65-bit integer>)"
