"""What a call raises for the caller's own mistakes and for a handler's exception (issue 18).

* Arguments that cannot be sent raise ``ArgumentTypeError`` (a ``TypeError``) or
  ``ArgumentValueError`` / ``RequestTooLarge`` (``ValueError``s) naming where
  the bad value sits, before a byte is written: the worker, its sessions and
  the channel are untouched (point 3).
* A handler's built-in exception comes back as ``RemoteError[ValueError]``, an
  instance of both, with the worker's traceback as ``__cause__`` (point 4).

Layer 1: the error classes; layer 2: the channel over a fake worker (the real
wire format); layer 3: real workers through a pool.
"""

from __future__ import annotations

import io
import logging
import pickle
import traceback
from typing import Any

import pytest
import trio

import engine
from engine.errors import (
    ArgumentError,
    ArgumentTypeError,
    ArgumentValueError,
    EngineError,
    RemoteError,
    RemoteTraceback,
    RequestTooLarge,
)
from engine.process.handle import SpawnRequest
from engine.testing.fakes import FakeContext, FakeWorkerFactory, Script

REQUEST = SpawnRequest(worker_id="fake-0.1", app="fake", start_timeout=5.0,
                       max_frame_size=4096)
HANG_GUARD = 30.0


def _circular() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


# (args, error class, path, words the message must hold)
BAD_ARGS: list[tuple[Any, type[ArgumentError], str, str]] = [
    ({"x": [1, 2, {3}]}, ArgumentTypeError, 'args["x"][2]', "(type set)"),
    ([b"raw"], ArgumentTypeError, "args[0]", "(type bytes)"),
    ({"f": len}, ArgumentTypeError, 'args["f"]', "which JSON cannot carry"),
    ({"deep": {"k": [object()]}}, ArgumentTypeError, 'args["deep"]["k"][0]', "(type object)"),
    ({"x": {1: "one"}}, ArgumentTypeError, 'args["x"]', "has the key 1 (type int)"),
    ({None: 1}, ArgumentTypeError, "args", "has the key None"),
    ({"n": float("nan")}, ArgumentValueError, 'args["n"]', "is nan"),
    ([1.0, float("-inf")], ArgumentValueError, "args[1]", "is -inf"),
    ({"s": "bad \udc80 text"}, ArgumentValueError, 'args["s"]', "lone surrogate"),
    ({"loop": _circular()}, ArgumentValueError, 'args["loop"][1]', 'is args["loop"] again'),
]


# --- layer 1: the classes ---------------------------------------------------------


@pytest.mark.layer1
def test_argument_errors_are_engine_errors_and_builtin_errors() -> None:
    assert issubclass(ArgumentTypeError, ArgumentError) and issubclass(ArgumentTypeError, TypeError)
    assert issubclass(ArgumentValueError, ArgumentError)
    assert issubclass(ArgumentValueError, ValueError)
    assert issubclass(RequestTooLarge, ArgumentValueError)
    assert issubclass(ArgumentError, EngineError)
    for name in ("ArgumentError", "ArgumentTypeError", "ArgumentValueError", "RequestTooLarge",
                 "RemoteTraceback"):
        assert getattr(engine, name) is getattr(engine.errors, name)


@pytest.mark.layer1
@pytest.mark.parametrize("name", ["ValueError", "KeyError", "TypeError", "ZeroDivisionError",
                                  "FileNotFoundError", "AttributeError", "TimeoutError"])
def test_a_builtin_remote_type_makes_an_instance_of_both(name: str) -> None:
    builtin = getattr(__builtins__, name, None) or __import__("builtins").__dict__[name]
    error = RemoteError.from_reply(type=name, message="it broke", command="c", worker_id="w-0.1")
    assert isinstance(error, RemoteError) and isinstance(error, builtin)
    assert type(error) is RemoteError[builtin]  # one class per built-in, cached
    assert type(error).__qualname__ == f"RemoteError[{name}]"
    assert error.type == name and error.remote_message == "it broke"
    assert error.args == ("it broke",)
    assert repr(error) == f"RemoteError[{name}]('it broke')"
    assert str(error) == f"'c' failed in worker w-0.1: {name}: it broke"


@pytest.mark.layer1
@pytest.mark.parametrize("name", ["MyAppError", "UnknownCommand", "StopIteration",
                                  "KeyboardInterrupt", "ExceptionGroup", "len", "not a name"])
def test_other_remote_types_stay_plain_remote_errors(name: str) -> None:
    error = RemoteError.from_reply(type=name, message="m")
    assert type(error) is RemoteError and error.type == name


@pytest.mark.layer1
def test_a_builtin_that_cannot_take_a_message_maps_to_its_nearest_base() -> None:
    error = RemoteError.from_reply(type="UnicodeDecodeError", message="bad byte")
    assert type(error) is RemoteError[UnicodeError] and isinstance(error, ValueError)
    assert error.type == "UnicodeDecodeError"
    with pytest.raises(TypeError, match=r"raised as RemoteError\[UnicodeError\]"):
        RemoteError[UnicodeDecodeError]
    with pytest.raises(TypeError, match="takes a built-in exception class"):
        RemoteError[int]  # type: ignore[type-arg, index]


@pytest.mark.layer1
def test_remote_errors_pickle_with_their_class_and_traceback() -> None:
    error = RemoteError.from_reply(type="KeyError", message="'k'", traceback="Traceback ...\n",
                                   command="get", worker_id="w-0.1", session="s")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RemoteError[KeyError]
    assert (copy.type, copy.remote_message, copy.command, copy.worker_id, copy.session) \
        == ("KeyError", "'k'", "get", "w-0.1", "s")
    assert isinstance(copy.__cause__, RemoteTraceback)
    assert pickle.loads(pickle.dumps(RemoteError[KeyError])) is RemoteError[KeyError]


@pytest.mark.layer1
def test_printing_a_remote_error_shows_the_remote_traceback() -> None:
    remote_tb = ('Traceback (most recent call last):\n  File "app.py", line 3, in divide\n'
                 "    return a / b\nZeroDivisionError: division by zero\n")
    error = RemoteError.from_reply(type="ZeroDivisionError", message="division by zero",
                                   traceback=remote_tb, command="divide", worker_id="w-0.1")
    assert isinstance(error.__cause__, RemoteTraceback) and error.__suppress_context__
    printed = "".join(traceback.format_exception(error))
    assert 'File "app.py", line 3, in divide' in printed
    assert "The above exception was the direct cause" in printed
    assert printed.rstrip().endswith(
        "engine.errors.RemoteError[ZeroDivisionError]: 'divide' failed in worker w-0.1: "
        "ZeroDivisionError: division by zero")
    # No traceback on the wire: no cause.
    assert RemoteError.from_reply(type="ValueError", message="m").__cause__ is None


# --- layer 2: the channel over a fake worker ---------------------------------------


async def _raise(ctx: FakeContext, args: Any) -> Any:
    raise {"value": ValueError, "key": KeyError, "mine": LookupError}[args["kind"]](args["text"])


FAKES = FakeWorkerFactory(Script(handlers={"raise": _raise}))


@pytest.mark.layer2
@pytest.mark.parametrize(("args", "error_class", "path", "words"), BAD_ARGS)
async def test_bad_args_raise_before_a_byte_is_written(
        args: Any, error_class: type[ArgumentError], path: str, words: str) -> None:
    async with FAKES(REQUEST) as worker:
        with pytest.raises(error_class) as info:
            await worker.call("echo", args, session="s")
        error = info.value
        assert error.path == path and error.command == "echo"
        assert words in str(error) and str(error).startswith(f"cannot send 'echo': {path} ")
        assert str(error).endswith("nothing was sent and the worker is untouched")
        # Nothing reached the worker: it served no request, and the channel is clean.
        assert not worker.dirty and worker.is_alive()
        assert worker.requests == []
        assert await worker.call("echo", {"ok": 1}) == {"ok": 1}


@pytest.mark.layer2
async def test_an_oversized_request_is_a_value_error_and_nothing_is_written() -> None:
    async with FAKES(REQUEST) as worker:
        with pytest.raises(ValueError) as info:
            await worker.call("echo", "x" * 5000)
        assert isinstance(info.value, RequestTooLarge)
        assert info.value.max_frame_size == 4096 and info.value.size > 5000
        assert "more than max_frame_size=4096" in str(info.value)
        assert worker.requests == [] and not worker.dirty
        assert await worker.call("echo", "x" * 100) == "x" * 100


@pytest.mark.layer2
@pytest.mark.parametrize(("command", "session", "path"),
                         [(7, None, "command"), ("", None, "command"), ("echo", 3, "session")])
async def test_a_bad_command_or_session_never_reaches_the_worker(
        command: Any, session: Any, path: str) -> None:
    async with FAKES(REQUEST) as worker:
        with pytest.raises(TypeError) as info:
            await worker.call(command, None, session=session)
        assert isinstance(info.value, ArgumentTypeError) and info.value.path == path
        assert worker.requests == [] and not worker.dirty


@pytest.mark.layer2
async def test_scalars_tuples_and_str_keys_go_through_unchanged() -> None:
    async with FAKES(REQUEST) as worker:
        assert await worker.call("echo", {"a": (1, 2), "b": {"c": None}}) \
            == {"a": [1, 2], "b": {"c": None}}
        for value in (None, 0, -1.5, "text", True, 10**30):
            assert await worker.call("echo", value) == value


@pytest.mark.layer2
async def test_a_handlers_builtin_exception_is_caught_by_its_type() -> None:
    async with FAKES(REQUEST) as worker:
        with pytest.raises(ValueError, match="bad input") as info:
            await worker.call("raise", {"kind": "value", "text": "bad input"})
        assert isinstance(info.value, RemoteError) and info.value.type == "ValueError"
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in _raise" in str(info.value.__cause__)
        with pytest.raises(LookupError):  # a base of the built-in catches it too
            await worker.call("raise", {"kind": "key", "text": "k"})
        with pytest.raises(RemoteError) as unknown:
            await worker.call("no_such_command")
        assert type(unknown.value) is RemoteError and unknown.value.type == "UnknownCommand"
        assert not worker.dirty


@pytest.mark.layer2
async def test_a_remote_error_leaving_open_pool_keeps_its_remote_traceback() -> None:
    with pytest.raises(ValueError) as info:
        async with engine.open_pool(size=1, worker_factory=FAKES) as pool:
            await pool.call("raise", {"kind": "value", "text": "bad input"})
    assert isinstance(info.value, RemoteError)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in _raise" in "".join(traceback.format_exception(info.value))


# --- layer 3: real workers through a pool ------------------------------------------


@pytest.mark.layer3
async def test_thirty_bad_calls_cost_no_worker_and_no_session() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, max_frame_size=4096) as pool:
            await pool.wait_ready(1, timeout=20)
            await pool.call("create_program", {"id": "kept", "handler": "echo", "signature":
                                               {"inputs": ["a"], "outputs": ["b"]}},
                            session="s")
            pid = (await pool.call("ping", session="s"))["pid"]
            failures = 0
            for i in range(30):
                args, error_class, _, _ = BAD_ARGS[i % len(BAD_ARGS)]
                with pytest.raises(error_class):
                    await pool.call("echo", args, session="s")
                failures += 1
                if i % 10 == 9:
                    with pytest.raises(RequestTooLarge):
                        await pool.call("echo", "x" * 5000, session="s")
            assert failures == 30
            stats = pool.statistics()
            assert stats.restarts == 0
            assert (await pool.call("ping", session="s"))["pid"] == pid
            listed = await pool.call("list_programs", session="s")
            assert [p["id"] for p in listed["programs"]] == ["kept"]


@pytest.mark.layer3
async def test_a_handlers_value_error_is_a_value_error_printed_with_its_remote_frames(
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1) as pool:
            try:
                await pool.call("fail", {"message": "boom"})
            except RuntimeError as error:  # programs' `fail` raises RuntimeError
                caught: BaseException = error
            assert isinstance(caught, RemoteError) and caught.remote_message == "boom"
            printed = "".join(traceback.format_exception(caught))
            # The handler's frame, from the worker, above the caller's own.
            assert 'programs.py", line' in printed and ", in fail" in printed
            assert printed.index("in fail") < printed.index("The above exception")
            with caplog.at_level(logging.ERROR, logger="test.remote"):
                logging.getLogger("test.remote").exception("call failed", exc_info=caught)
            assert "in fail" in caplog.text and "RemoteError[RuntimeError]" in caplog.text
            stream = io.StringIO()
            traceback.print_exception(caught, file=stream)
            assert stream.getvalue() == printed
            assert pool.statistics().restarts == 0
