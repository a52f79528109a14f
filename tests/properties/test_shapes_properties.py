"""Properties of engine.client.shapes: total over JSON, map/list round trip, counts checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.client.shapes import (
    ExecutionResult,
    PingInfo,
    ProgramInfo,
    ProgramList,
    parse_deleted,
    parse_execution,
    parse_ping,
    parse_program_info,
    parse_program_list,
)
from engine.errors import ResponseShapeError
from engine.testing import strategies as answers

pytestmark = pytest.mark.layer1

# The autouse leak check is function-scoped; it wraps the whole test, not each
# example, which is what we want here (the examples do no I/O).
_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Every normaliser with the type it returns when it does not raise.
NORMALISERS: list[tuple[Callable[[Any], Any], type]] = [
    (parse_program_list, ProgramList),
    (parse_program_info, ProgramInfo),
    (parse_execution, ExecutionResult),
    (parse_ping, PingInfo),
    (parse_deleted, bool),
]
_IDS = [parse.__name__ for parse, _ in NORMALISERS]


def typed_or_shape_error(parse: Callable[[Any], Any], expected: type, answer: Any) -> None:
    """The property itself: a value of ``expected`` type, or ResponseShapeError, nothing else."""
    try:
        result = parse(answer)
    except ResponseShapeError as error:
        # The message must be renderable too: it is what users see.
        assert str(error).startswith(f"unexpected shape for {error.what}: ")
        assert error.problem
    else:
        assert isinstance(result, expected)


@pytest.mark.parametrize(("parse", "expected"), NORMALISERS, ids=_IDS)
@_settings
@given(answer=answers.json_values())
def test_any_json_gives_typed_value_or_shape_error(
    parse: Callable[[Any], Any], expected: type, answer: Any
) -> None:
    typed_or_shape_error(parse, expected, answer)


# Valid answers of every kind with one thing broken: random JSON rarely gets
# past the first key check, these reach the deep paths (signature.inputs[3]...).
ALMOST_VALID = answers.mutated(
    st.one_of(
        answers.program_list_answers().map(lambda pair: pair[1]),
        answers.program_info_answers().map(lambda pair: pair[1]),
        answers.execution_answers().map(lambda pair: pair[1]),
        answers.ping_answers().map(lambda pair: pair[1]),
    )
)


@pytest.mark.parametrize(("parse", "expected"), NORMALISERS, ids=_IDS)
@_settings
@given(answer=ALMOST_VALID)
def test_almost_valid_answers_give_typed_value_or_shape_error(
    parse: Callable[[Any], Any], expected: type, answer: Any
) -> None:
    typed_or_shape_error(parse, expected, answer)


@_settings
@given(pair=answers.program_list_answers())
def test_valid_map_and_list_answers_round_trip(pair: tuple[ProgramList, Any]) -> None:
    expected, answer = pair
    assert parse_program_list(answer) == expected


@_settings
@given(programs=answers.program_lists())
def test_both_renderings_parse_to_the_same_value(programs: ProgramList) -> None:
    as_map = parse_program_list(programs.to_json())
    as_list = parse_program_list(programs.to_json(legacy=True))
    assert as_map == as_list == programs
    assert as_map.total_count == len(as_map.programs)


@_settings
@given(pair=answers.program_info_answers())
def test_program_info_round_trips(pair: tuple[ProgramInfo, dict[str, Any]]) -> None:
    expected, answer = pair
    assert parse_program_info(answer) == expected


@_settings
@given(answer=answers.mismatched_program_list_answers())
def test_total_count_mismatch_is_always_detected(answer: dict[str, Any]) -> None:
    with pytest.raises(ResponseShapeError) as info:
        parse_program_list(answer)
    assert info.value.problem.startswith("total_count is ")
    assert f"but programs has {len(answer['programs'])} entr" in info.value.problem


@_settings
@given(pair=answers.execution_answers())
def test_execution_round_trips(pair: tuple[ExecutionResult, dict[str, Any]]) -> None:
    expected, answer = pair
    assert parse_execution(answer) == expected


@_settings
@given(pair=answers.ping_answers())
def test_ping_round_trips(pair: tuple[PingInfo, dict[str, Any]]) -> None:
    expected, answer = pair
    assert parse_ping(answer) == expected


@_settings
@given(
    pair=answers.program_list_answers(),
    count=answers.json_values(max_leaves=3).filter(
        lambda value: not (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    ),
)
def test_count_that_is_not_a_non_negative_int_is_rejected(
    pair: tuple[ProgramList, Any], count: Any
) -> None:
    # Covers True for 1 and 1.0 for 1: a count must be a real integer.
    _, answer = pair
    programs = answer["programs"] if isinstance(answer, dict) else answer
    with pytest.raises(ResponseShapeError) as info:
        parse_program_list({"programs": programs, "total_count": count})
    assert info.value.problem.startswith("total_count ")
