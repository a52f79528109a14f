"""The child-side modules, in process (layer 1).

The worker runtime, the app API and the default app must import no Trio and no
attrs (start-up time is a benchmarked property); this file checks that, and
unit-tests the App API, the runtime's pieces and the default app's handlers
without spawning workers (test_runtime.py does that, at layer 3).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from engine.errors import ProtocolError
from engine.protocol import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, Request, parse_response
from engine.workers import programs, runtime
from engine.workers.app import BUILTIN_COMMANDS, App, Context, SessionStore, rss_mb

pytestmark = pytest.mark.layer1

CHILD_MODULES = ("engine.workers.runtime", "engine.workers.app", "engine.workers.programs",
                 "engine.workers.pickled", "engine.workers.bare")
FORBIDDEN = ("trio", "attrs", "attr")


def test_child_side_imports_no_trio_or_attrs() -> None:
    # Only modules the child-side code itself pulls in count: whatever the
    # interpreter's site hooks loaded before (coverage, say) is not our doing.
    script = (
        "import importlib, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {CHILD_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "new = set(sys.modules) - before\n"
        f"loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)\n"
        "assert not loaded, f'child-side modules imported {loaded}'\n"
        "from engine.workers.pickled import make_handler\n"
        "make_handler(1 << 20, lambda exc, skip: '')  # a pickle worker's start-up\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(new & {'subprocess', 'traceback', 'inspect', 'argparse',\n"
        "                      'dataclasses', 'asyncio', 'logging', 'typing', 'pickle'})\n"
        "assert not heavy, f'child-side modules imported {heavy} eagerly'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# --- App -------------------------------------------------------------------------------


def test_app_registers_commands_in_order() -> None:
    app = App("demo")

    @app.command("first")
    def one(args: Any, ctx: Context) -> Any:
        return 1

    @app.command()
    def second(args: Any, ctx: Context) -> Any:
        return 2

    assert app.commands() == ["first", "second"]
    assert app.handler("first") is one
    assert app.handler("second") is second
    assert app.handler("missing") is None
    assert "demo" in repr(app)


@pytest.mark.parametrize("name", ["", None, 5])
def test_app_needs_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        App(name)


def test_app_rejects_bad_registrations() -> None:
    app = App("demo")
    app.add_command("x", lambda args, ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        app.add_command("x", lambda args, ctx: None)
    for builtin in BUILTIN_COMMANDS:
        with pytest.raises(ValueError, match="built-in"):
            app.add_command(builtin, lambda args, ctx: None)
    with pytest.raises(TypeError, match="callable"):
        app.add_command("y", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parentheses"):
        app.command(lambda args, ctx: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        app.command("")


def test_app_rejects_async_handlers() -> None:
    app = App("demo")

    async def coroutine(args: Any, ctx: Context) -> Any:
        return None

    async def agen(args: Any, ctx: Context) -> Any:
        yield None

    for handler in (coroutine, agen):
        with pytest.raises(TypeError, match="async"):
            app.add_command(handler.__name__, handler)


def test_on_start_hooks_run_in_order() -> None:
    app = App("demo")
    calls: list[int] = []
    app.on_start(lambda: calls.append(1))
    app.on_start(lambda: calls.append(2))
    app.run_start_hooks()
    assert calls == [1, 2]
    with pytest.raises(TypeError):
        app.on_start(3)  # type: ignore[type-var]


# --- Context and SessionStore ----------------------------------------------------------


def make_ctx(store: SessionStore | None = None, session: str | None = None,
             written: list[bytes] | None = None) -> Context:
    sink = written if written is not None else []
    return Context(session=session, worker_id="t1", request_id=1,
                   store=store if store is not None else SessionStore(), writer=sink.append)


def test_state_is_per_session_and_lazy() -> None:
    store = SessionStore()
    a = make_ctx(store, "a")
    assert len(store) == 0  # nothing created until the handler looks at the state
    a.state["x"] = 1
    assert make_ctx(store, "a").state == {"x": 1}
    assert make_ctx(store, "b").state == {}
    assert len(store) == 2 and "a" in store


def test_anonymous_state_is_shared_and_not_counted() -> None:
    store = SessionStore()
    make_ctx(store).state["y"] = 2
    assert make_ctx(store).state == {"y": 2}
    assert len(store) == 0
    assert store.drop(None) is True
    assert make_ctx(store).state == {}


def test_drop_session() -> None:
    store = SessionStore()
    make_ctx(store, "a").state["k"] = 1
    assert store.drop("a") is True
    assert store.drop("a") is False
    assert make_ctx(store, "a").state == {}


def test_write_raw() -> None:
    written: list[bytes] = []
    ctx = make_ctx(written=written)
    ctx.write_raw(b"abc")
    ctx.write_raw(b"d")
    assert written == [b"abc", b"d"]
    with pytest.raises(TypeError, match="bytes"):
        ctx.write_raw("text")  # type: ignore[arg-type]


def test_rss_mb_is_positive() -> None:
    assert rss_mb() > 1


# --- runtime pieces ------------------------------------------------------------------


def test_parse_args() -> None:
    options = runtime.parse_args(["--app", "m:a", "--worker-id=w9", "--max-frame-size", "4096"])
    assert (options.app, options.worker_id, options.max_frame_size) == ("m:a", "w9", 4096)
    assert runtime.parse_args(["--worker-id", "w", "--app", "m"]).max_frame_size \
        == DEFAULT_MAX_FRAME_SIZE


@pytest.mark.parametrize(("argv", "match"), [
    ([], "missing --app and --worker-id"),
    (["--app", "m"], "missing --worker-id"),
    (["--app"], "--app needs a value"),
    (["--app", "m", "--worker-id", "w", "extra"], "unexpected argument 'extra'"),
    (["--app", "m", "--worker-id", "w", "--max-frame-size", "x"], "must be an integer"),
    (["--app", "m", "--worker-id", "w", "--max-frame-size", "10"], "at least 1024"),
])
def test_parse_args_errors(argv: list[str], match: str) -> None:
    with pytest.raises(runtime.UsageError, match=match):
        runtime.parse_args(argv)


def test_load_app() -> None:
    assert runtime.load_app("engine.workers.programs") is programs.app
    assert runtime.load_app("engine.workers.programs:app") is programs.app
    with pytest.raises(runtime.AppNotFound, match="no App instance"):
        runtime.load_app("json")
    with pytest.raises(ModuleNotFoundError):
        runtime.load_app("engine.no_such_module")


class PipeWorker:
    """A runtime Worker whose frame channel is a pipe we read back."""

    def __init__(self, app: App, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.read_fd, write_fd = os.pipe()
        self.channel = runtime.Channel(write_fd, max_frame_size)
        self.worker = runtime.Worker(app, "pw", self.channel)
        self.decoder = FrameDecoder(max_frame_size)
        self.next_id = 1

    def call(self, command: str, args: Any = None, session: str | None = None) -> Any:
        self.worker.handle(Request(self.next_id, command, args, session))
        self.next_id += 1
        self.decoder.feed(os.read(self.read_fd, 1 << 20))
        message = self.decoder.next_message()
        assert message is not None
        return parse_response(message)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.channel.fd)


@pytest.fixture
def pipe_worker() -> Iterator[PipeWorker]:
    app = App("pipe")
    app.add_command("value", lambda args, ctx: args)
    app.add_command("a_set", lambda args, ctx: {1})
    app.add_command("big", lambda args, ctx: "x" * args)

    def broken(args: Any, ctx: Context) -> Any:
        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no str for you")
        raise Unprintable

    app.add_command("broken", broken)
    pw = PipeWorker(app, max_frame_size=2048)
    yield pw
    pw.close()


def test_worker_results_and_errors(pipe_worker: PipeWorker) -> None:
    assert pipe_worker.call("value", {"a": [1]}).result == {"a": [1]}
    assert pipe_worker.call("a_set").error.type == "UnserializableResult"
    assert pipe_worker.call("big", 4000).error.type == "ResultTooLarge"
    assert pipe_worker.call("nope").error.type == "UnknownCommand"
    unprintable = pipe_worker.call("broken").error
    assert unprintable.type == "Unprintable"
    assert unprintable.message == "<unprintable Unprintable>"
    stats = pipe_worker.call("stats").result  # requests counts this stats call too
    assert stats["calls"] == 4 and stats["errors"] == 3 and stats["requests"] == 6


def test_worker_hello_lists_builtins_then_app_commands(pipe_worker: PipeWorker) -> None:
    hello = pipe_worker.worker.hello()["result"]
    assert hello["commands"] == [*BUILTIN_COMMANDS, "value", "a_set", "big", "broken"]
    assert hello["app"] == "pipe" and hello["worker_id"] == "pw"


def test_worker_shutdown_sets_stopping(pipe_worker: PipeWorker) -> None:
    assert pipe_worker.call("shutdown").result == {"shutting_down": True}
    assert pipe_worker.worker.stopping


def test_serve_protocol_error_and_eof(pipe_worker: PipeWorker) -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"\x00\x00\x00\x03abc")
        assert pipe_worker.worker.serve(read_fd) == runtime.EXIT_PROTOCOL_ERROR
        error = pipe_worker.decoder
        error.feed(os.read(pipe_worker.read_fd, 4096))
        message = error.next_message()
        assert message is not None and message["error"]["type"] == "ProtocolError"
        os.close(write_fd)
        write_fd = -1
        assert pipe_worker.worker.serve(read_fd) == runtime.EXIT_OK
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_clip_keeps_errors_encodable() -> None:
    assert runtime._clip("\ud800 lone", 100) == "? lone"
    clipped = runtime._clip("z" * 50, 10)
    assert clipped.startswith("z" * 10) and "40 more characters" in clipped


# --- the default app's handlers, called directly ----------------------------------------


def program(program_id: str = "p", handler: str = "echo", inputs: list[str] | None = None,
            outputs: list[str] | None = None) -> dict[str, Any]:
    return {"id": program_id, "handler": handler,
            "signature": {"inputs": inputs or ["a"], "outputs": outputs or ["b"]}}


@pytest.mark.parametrize(("handler", "inputs", "outputs", "given", "expected"), [
    ("echo", ["a", "b"], ["x", "y"], {"a": 1, "b": [2]}, {"x": 1, "y": [2]}),
    ("sum", ["a", "b", "c"], ["total"], {"a": 1, "b": 2, "c": 0.5}, {"total": 3.5}),
    ("concat", ["a", "b"], ["s"], {"a": "foo", "b": "bar"}, {"s": "foobar"}),
    ("upper", ["a"], ["b"], {"a": "shout"}, {"b": "SHOUT"}),
    ("length", ["a", "b"], ["la", "lb"], {"a": "four", "b": [1, 2]}, {"la": 4, "lb": 2}),
])
def test_program_handlers(handler: str, inputs: list[str], outputs: list[str],
                          given: dict[str, Any], expected: dict[str, Any]) -> None:
    ctx = make_ctx(session="s")
    programs.create_program(program("p", handler, inputs, outputs), ctx)
    assert programs.execute_program({"id": "p", "inputs": given}, ctx) == {"outputs": expected}


@pytest.mark.parametrize(("handler", "value", "error"), [
    ("sum", "3", TypeError),
    ("sum", True, TypeError),
    ("upper", 3, TypeError),
    ("length", 3, TypeError),
])
def test_program_handlers_reject_wrong_input_types(handler: str, value: Any,
                                                   error: type[Exception]) -> None:
    ctx = make_ctx()
    programs.create_program(program("p", handler), ctx)
    with pytest.raises(error):
        programs.execute_program({"id": "p", "inputs": {"a": value}}, ctx)


@pytest.mark.parametrize("inputs", [{}, {"a": 1, "zz": 2}, [1]])
def test_execute_program_checks_inputs(inputs: Any) -> None:
    ctx = make_ctx()
    programs.create_program(program(), ctx)
    with pytest.raises(ValueError, match="inputs"):
        programs.execute_program({"id": "p", "inputs": inputs}, ctx)


def test_program_info_is_a_copy() -> None:
    ctx = make_ctx()
    info = programs.create_program(program(), ctx)
    info["signature"]["inputs"].append("tampered")
    assert programs.get_program_info({"id": "p"}, ctx)["signature"]["inputs"] == ["a"]


def test_missing_program() -> None:
    with pytest.raises(programs.ProgramNotFound, match="anonymous session"):
        programs.get_program_info({"id": "ghost"}, make_ctx())
    with pytest.raises(programs.ProgramNotFound, match="session 's9'"):
        programs.delete_program({"id": "ghost"}, make_ctx(session="s9"))


def test_list_programs_shape() -> None:
    ctx = make_ctx()
    assert programs.list_programs(None, ctx) == {"programs": [], "total_count": 0}
    programs.create_program(program("one"), ctx)
    programs.create_program(program("two"), ctx)
    listing = programs.list_programs({}, ctx)
    assert listing["total_count"] == 2
    assert [p["id"] for p in listing["programs"]] == ["one", "two"]
    with pytest.raises(TypeError):
        programs.list_programs([1], ctx)


def test_garbage_writes_raw_bytes() -> None:
    written: list[bytes] = []
    assert programs.garbage({"data": "zz✓"}, make_ctx(written=written)) == {"written": 5}
    assert written == ["zz✓".encode()]


def test_fault_handler_arguments_are_validated() -> None:
    ctx = make_ctx()
    with pytest.raises(RuntimeError, match=r"^boom$"):
        programs.fail({"message": "boom"}, ctx)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        programs.crash({"code": 256}, ctx)
    with pytest.raises(ValueError, match="'mb'"):
        programs.alloc({"mb": -1}, ctx)
    with pytest.raises(ValueError, match="'seconds'"):
        programs.sleep({"seconds": float("inf")}, ctx)
    with pytest.raises(TypeError, match="args must be an object"):
        programs.noise("text", ctx)


def test_protocol_error_is_not_a_handler_concern() -> None:
    # A handler that raises ProtocolError itself is answered like any other
    # exception: only the decoder/parser stop the worker.
    app = App("pe")

    def raises(args: Any, ctx: Context) -> Any:
        raise ProtocolError("user code said so")

    app.add_command("raises", raises)
    pw = PipeWorker(app)
    try:
        response = pw.call("raises")
        assert response.error.type == "ProtocolError"
        assert not pw.worker.stopping
    finally:
        pw.close()
