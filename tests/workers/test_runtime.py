"""The worker runtime as a real subprocess (layer 3).

Plain synchronous tests: each starts ``python -m engine.workers.runtime`` with
pipes, talks the framed protocol through :class:`WorkerProcess` (which waits
for output with ``selectors`` and a deadline, never with sleeps), and waits for
every process it started.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import (
    FrameDecoder,
    encode_frame,
    make_request,
    parse_hello,
    parse_response,
)
from engine.workers import runtime
from engine.workers.app import BUILTIN_COMMANDS, App
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


class WorkerProcess:
    """One runtime subprocess in its own session, with frame I/O helpers."""

    def __init__(self, *extra: str, app: str = "engine.workers.programs",
                 worker_id: str = "w1", env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "engine.workers.runtime", "--app", app,
                     "--worker-id", worker_id, *extra]
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.stdin_fd = self.proc.stdin.fileno()
        self.stdout_fd = self.proc.stdout.fileno()
        self.stderr_fd = self.proc.stderr.fileno()
        self.decoder = FrameDecoder()
        self.raw = bytearray()  # every byte seen on stdout, for garbage tests
        self.decoding = True  # False: keep stdout bytes raw only (garbage tests)
        self.stderr = bytearray()
        self.open_fds = {self.stdout_fd, self.stderr_fd}
        self.selector = selectors.DefaultSelector()
        for fd in self.open_fds:
            self.selector.register(fd, selectors.EVENT_READ)
        self.next_id = 1

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- output

    def _pump(self, deadline: float) -> bool:
        """Read whatever is ready before ``deadline``; False once stdout is closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"worker said nothing in time; stderr: {self.stderr_text()!r}")
        for key, _ in self.selector.select(remaining):
            fd = int(key.fd)
            data = os.read(fd, 65536)
            if not data:
                self.selector.unregister(fd)
                self.open_fds.discard(fd)
            elif fd == self.stdout_fd:
                self.raw += data
                if self.decoding:
                    self.decoder.feed(data)
            else:
                self.stderr += data
        return self.stdout_fd in self.open_fds

    def read_message(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (message := self.decoder.next_message()) is None:
            if not self._pump(deadline):
                raise EOFError(f"worker closed stdout; stderr: {self.stderr_text()!r}")
        return message

    def read_raw(self, start: int, size: int, timeout: float = TIMEOUT) -> bytes:
        """Bytes ``start:start+size`` of everything the worker wrote on stdout."""
        deadline = time.monotonic() + timeout
        while len(self.raw) < start + size and self._pump(deadline):
            pass
        return bytes(self.raw[start:start + size])

    def hello(self) -> dict[str, Any]:
        message = self.read_message()
        parse_hello(message)
        return message["result"]  # type: ignore[no-any-return]

    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")

    # -- input

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.stdin_fd, view):]

    def send(self, command: str, args: Any = None, session: str | None = None) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.send_raw(encode_frame(make_request(request_id, command, args, session)))
        return request_id

    def request(self, command: str, args: Any = None, session: str | None = None,
                timeout: float = TIMEOUT) -> dict[str, Any]:
        """Send one request and return its (validated) response message."""
        request_id = self.send(command, args, session)
        message = self.read_message(timeout)
        response = parse_response(message)
        assert response.id == request_id
        return message

    def call(self, command: str, args: Any = None, session: str | None = None) -> Any:
        """The result of a call that must succeed."""
        message = self.request(command, args, session)
        assert message["ok"], message
        return message["result"]

    def error(self, command: str, args: Any = None, session: str | None = None) \
            -> dict[str, Any]:
        """The error object of a call that must fail."""
        message = self.request(command, args, session)
        assert not message["ok"], message
        return message["error"]  # type: ignore[no-any-return]

    # -- ending

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Drain both pipes until the worker closes them, then reap it."""
        deadline = time.monotonic() + timeout
        while self.open_fds:
            self._pump(deadline)
        return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        """Kill the whole process group if needed and release everything."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.selector.close()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Factory for WorkerProcess; every worker started is killed and reaped."""
    started: list[WorkerProcess] = []

    def start(*extra: str, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(*extra, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def worker(spawn: Any) -> WorkerProcess:
    """A ready worker of the default app (its hello already read)."""
    w: WorkerProcess = spawn()
    w.hello()
    return w


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory on PYTHONPATH for throwaway worker apps (see write_app)."""
    return tmp_path


def write_app(directory: Path, name: str, source: str) -> dict[str, str]:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return {"PYTHONPATH": os.pathsep.join([str(directory), str(REPO)])}


def reap_if_ours(pid: int) -> None:
    """Reap ``pid`` if it ended up as our child (when we are a subreaper)."""
    try:
        os.waitpid(pid, 0)  # only called once pid_alive(pid) is False: cannot block
    except ChildProcessError:
        pass


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll /proc for an external process to disappear (there is no event for it)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# --- start-up ---------------------------------------------------------------------


def test_hello_fields(spawn: Any) -> None:
    w = spawn(worker_id="hello-7")
    hello = w.hello()
    assert hello["protocol"] == 1
    assert hello["worker_id"] == "hello-7"
    assert hello["pid"] == w.pid
    assert hello["app"] == "programs"
    # Where it runs: what a remote worker's statistics show.
    assert hello["host"] == os.uname().nodename
    assert hello["commands"][:len(BUILTIN_COMMANDS)] == list(BUILTIN_COMMANDS)
    for command in ("create_program", "execute_program", "list_programs", "get_program_info",
                    "delete_program", "echo", "sleep", "cpu", "alloc", "fail", "crash",
                    "hang", "noise", "garbage", "spawn_child"):
        assert command in hello["commands"]


@pytest.mark.parametrize(("spec", "error_type", "text"), [
    ("engine.no_such_module", "ModuleNotFoundError", "engine.no_such_module"),
    ("json", "AppNotFound", "no App instance"),
    ("engine.workers.programs:nope", "AppNotFound", "engine.workers.programs.nope is missing"),
    ("engine.workers.programs:PROGRAM_HANDLERS", "AppNotFound", "a dict, not an engine App"),
])
def test_bad_app_gives_error_hello_and_exit_3(
    spawn: Any, spec: str, error_type: str, text: str,
) -> None:
    w = spawn(app=spec)
    message = w.read_message()
    response = parse_response(message)
    assert response.id == 0 and not response.ok and response.error is not None
    assert response.error.type == error_type
    assert text in response.error.message
    assert response.error.traceback
    assert w.wait_exit() == runtime.EXIT_START_FAILED
    assert "cannot load app" in w.stderr_text()


def test_app_import_error_reports_the_users_exception(spawn: Any, app_dir: Path) -> None:
    env = write_app(app_dir, "broken_app", """
        raise RuntimeError("database unreachable")
    """)
    w = spawn(app="broken_app", env=env)
    error = parse_response(w.read_message()).error
    assert error is not None
    assert error.type == "RuntimeError"
    assert "database unreachable" in error.message
    assert w.wait_exit() == runtime.EXIT_START_FAILED
    assert "database unreachable" in w.stderr_text()


def test_on_start_failure_is_a_start_failure(spawn: Any, app_dir: Path) -> None:
    env = write_app(app_dir, "bad_start", """
        from engine.workers.app import App
        app = App("bad_start")

        @app.on_start
        def connect():
            raise ConnectionError("no model server")
    """)
    w = spawn(app="bad_start", env=env)
    error = parse_response(w.read_message()).error
    assert error is not None
    assert error.type == "ConnectionError"
    assert "on_start hook" in error.message and "no model server" in error.message
    assert w.wait_exit() == runtime.EXIT_START_FAILED


def test_single_app_found_under_any_name_and_on_start_runs(
    spawn: Any, app_dir: Path,
) -> None:
    env = write_app(app_dir, "custom_app", """
        from engine.workers.app import App
        service = App("custom")
        started = []

        @service.on_start
        def mark():
            started.append(True)

        @service.command()
        def was_started(args, ctx):
            return {"started": started, "worker_id": ctx.worker_id}
    """)
    w = spawn(app="custom_app", env=env, worker_id="c1")
    assert w.hello()["app"] == "custom"
    assert w.call("was_started") == {"started": [True], "worker_id": "c1"}


@pytest.mark.parametrize("argv", [
    ["--max-frame-size", "12"],
    ["--max-frame-size", "lots"],
    ["--bogus", "1"],
    ["--pickle-frame-size", "12"],
    ["--pickle-frame-size", str(1 << 31)],
])
def test_usage_error_gives_error_hello_and_exit_2(spawn: Any, argv: list[str]) -> None:
    w = spawn(*argv)
    error = parse_response(w.read_message()).error
    assert error is not None and error.type == "UsageError"
    assert w.wait_exit() == runtime.EXIT_USAGE


@pytest.mark.parametrize("value", ["not json", '{"a": 1}', '["ok", 2]'])
def test_a_malformed_parent_sys_path_is_a_usage_error(spawn: Any, value: str) -> None:
    w = spawn(env={runtime.SYS_PATH_VARIABLE: value})
    error = parse_response(w.read_message()).error
    assert error is not None and error.type == "UsageError"
    assert f"{runtime.SYS_PATH_VARIABLE} must be a JSON list of strings" in error.message
    assert w.wait_exit() == runtime.EXIT_USAGE


def test_the_parent_sys_path_replaces_the_workers(spawn: Any, app_dir: Path) -> None:
    env = write_app(app_dir, "path_app", """
        import os, sys
        from engine.workers.app import App
        app = App("path")

        @app.command()
        def sys_path(args, ctx):
            return [sys.path, os.environ.get("ENGINE_WORKER_SYS_PATH")]
    """)
    # The app is found through the given path alone (PYTHONPATH only finds the engine).
    wanted = [str(app_dir), str(REPO), "/does/not/exist", *sys.path]
    env = {"PYTHONPATH": str(REPO), runtime.SYS_PATH_VARIABLE: json.dumps(wanted)}
    w = spawn(app="path_app", env=env)
    w.hello()
    assert w.call("sys_path") == [wanted, None]


# --- built-ins ----------------------------------------------------------------------


def test_ping(worker: WorkerProcess) -> None:
    assert worker.call("ping") == {"pid": worker.pid, "worker_id": "w1", "app": "programs"}


def test_health_and_stats(worker: WorkerProcess) -> None:
    worker.call("echo", {"x": 1}, session="s1")
    worker.call("create_program", {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b"]},
                                   "handler": "echo"}, session="s1")
    health = worker.call("health")
    assert health["status"] == "ok"
    assert isinstance(health["rss_mb"], float) and health["rss_mb"] > 1
    assert health["sessions"] == 1  # echo never touched the state; create_program did
    assert health["calls"] == 2
    stats = worker.call("stats")
    assert stats["calls"] == 2 and stats["sessions"] == 1 and stats["pid"] == worker.pid
    assert stats["uptime"] > 0 and stats["rss_mb"] > 1
    assert stats["busy_poll"] is None  # the runtime's default: no polling


def test_stats_say_how_busy_polling_fares(spawn: Any) -> None:
    worker = spawn("--busy-poll-us", "100")
    worker.hello()
    for _ in range(3):
        worker.call("ping")
    polling = worker.call("stats")["busy_poll"]
    assert polling["waits"] == 4  # every wait for a request, this one's included
    assert polling["deschedules"] >= 0 and isinstance(polling["contended"], bool)
    assert polling["typical_wait_us"] >= 0




def test_cleanup_session(worker: WorkerProcess) -> None:
    program = {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"}
    worker.call("create_program", program, session="s1")
    worker.call("create_program", program, session="s2")
    assert worker.call("cleanup_session", {"session": "s1"}) == {"removed": True}
    assert worker.call("cleanup_session", {"session": "s1"}) == {"removed": False}
    assert worker.call("cleanup_session", None, session="s2") == {"removed": True}
    assert worker.call("health")["sessions"] == 0
    assert worker.error("cleanup_session", {"session": 3})["type"] == "TypeError"


def test_shutdown_replies_then_exits_0(worker: WorkerProcess) -> None:
    assert worker.call("shutdown") == {"shutting_down": True}
    assert worker.wait_exit() == runtime.EXIT_OK


def test_stdin_eof_exits_0(worker: WorkerProcess) -> None:
    worker.close_stdin()
    assert worker.wait_exit() == runtime.EXIT_OK


# --- dispatch and failures ------------------------------------------------------------


def test_a_json_only_worker_announces_no_codec_and_knows_no_run_sync(
        worker: WorkerProcess) -> None:
    error = worker.error("engine.run_sync", [1])
    assert error["type"] == "UnknownCommand"


def test_run_sync_through_json_is_refused_and_the_worker_serves_on(spawn: Any) -> None:
    w = spawn("--pickle-frame-size", "4096")
    assert w.hello()["codecs"] == ["pickle5"]
    error = w.error("engine.run_sync", {"fn": "os.getpid"})
    assert error["type"] == "TypeError" and "pickle frames only" in error["message"]
    assert w.call("ping")["pid"] == w.pid


def test_an_app_cannot_register_the_run_sync_command() -> None:
    with pytest.raises(ValueError, match="built-in"):
        App("x").add_command("engine.run_sync", lambda args, ctx: None)


def test_unknown_command_keeps_serving(worker: WorkerProcess) -> None:
    error = worker.error("no_such_command")
    assert error["type"] == "UnknownCommand"
    assert "no_such_command" in error["message"]
    assert "create_program" in error["message"] and "ping" in error["message"]
    assert worker.call("ping")["pid"] == worker.pid


def test_raising_handler_keeps_serving_with_traceback(worker: WorkerProcess) -> None:
    error = worker.error("fail", {"message": "boom"})
    assert error["type"] == "RuntimeError"
    assert error["message"] == "boom"
    traceback = error["traceback"]
    assert traceback.startswith("Traceback")
    assert "programs.py" in traceback and "RuntimeError: boom" in traceback
    assert "runtime.py" not in traceback  # starts at the handler, not the dispatcher
    assert worker.call("ping")["pid"] == worker.pid
    assert worker.call("stats")["errors"] == 1


def test_pipelined_requests_answered_in_order(worker: WorkerProcess) -> None:
    frames = [encode_frame(make_request(i, "echo", {"i": i})) for i in range(1, 6)]
    worker.send_raw(b"".join(frames))
    results = [worker.read_message() for _ in range(5)]
    assert [(r["id"], r["result"]) for r in results] == [(i, {"i": i}) for i in range(1, 6)]


def test_request_written_in_fragments(worker: WorkerProcess) -> None:
    data = encode_frame(make_request(1, "echo", {"text": "fragmented"}))
    for i in range(0, len(data), 3):
        worker.send_raw(data[i:i + 3])
    assert worker.read_message()["result"] == {"text": "fragmented"}


def test_noise_goes_to_stderr_and_framing_survives(worker: WorkerProcess) -> None:
    assert worker.call("noise", {"text": "stray print 42"}) == {"printed": 14}
    assert worker.call("echo", [1, 2]) == [1, 2]
    worker.close_stdin()
    assert worker.wait_exit() == 0
    assert "stray print 42" in worker.stderr_text()


def test_writes_to_fd_1_go_to_stderr(spawn: Any, app_dir: Path) -> None:
    env = write_app(app_dir, "fd1_app", """
        import os, sys
        from engine.workers.app import App
        app = App("fd1")

        @app.command()
        def scribble(args, ctx):
            os.write(1, b"raw fd 1 write\\n")
            sys.__stdout__.write("via __stdout__\\n")
            sys.__stdout__.flush()
            return "ok"
    """)
    w = spawn(app="fd1_app", env=env)
    w.hello()
    assert w.call("scribble") == "ok"
    w.close_stdin()
    assert w.wait_exit() == 0
    assert "raw fd 1 write" in w.stderr_text() and "via __stdout__" in w.stderr_text()


def test_unsendable_results(spawn: Any, app_dir: Path) -> None:
    env = write_app(app_dir, "results_app", """
        from engine.workers.app import App
        app = App("results")

        @app.command()
        def a_set(args, ctx):
            return {1, 2}

        @app.command()
        def nan(args, ctx):
            return float("nan")

        @app.command()
        def big(args, ctx):
            return "x" * args

        @app.command()
        def int_keys(args, ctx):
            return {"table": {1: "one"}}

        @app.command()
        def nested_set(args, ctx):
            return {"rows": [1, {"tags": {"a"}}]}

        @app.command()
        def huge_error(args, ctx):
            raise ValueError("y" * 100_000)
    """)
    w = spawn("--max-frame-size", "4096", app="results_app", env=env)
    w.hello()
    assert w.error("a_set")["type"] == "UnserializableResult"
    assert w.error("nan")["type"] == "UnserializableResult"
    # Same rules as for a call's args: a non-str key is refused, not turned into
    # a string, and the message says where the offending value sits.
    keys = w.error("int_keys")
    assert keys["type"] == "UnserializableResult"
    assert keys["message"].startswith('result["table"] has the key 1 (type int)')
    nested = w.error("nested_set")
    assert nested["message"].startswith('result["rows"][1]["tags"] is {\'a\'} (type set)')
    assert w.call("big", 100) == "x" * 100
    too_large = w.error("big", 5000)
    assert too_large["type"] == "ResultTooLarge"
    assert "max_frame_size=4096" in too_large["message"]
    huge = w.error("huge_error")  # clipped so that the error itself still fits
    assert huge["type"] == "ValueError"
    assert w.call("ping")["pid"] == w.pid


def test_crash_exits_with_the_given_code(worker: WorkerProcess) -> None:
    worker.send("crash", {"code": 7})
    assert worker.wait_exit() == 7


def test_sigint_is_ignored(worker: WorkerProcess) -> None:
    os.kill(worker.pid, signal.SIGINT)
    assert worker.call("ping")["pid"] == worker.pid  # reaching the handler takes a while
    os.kill(worker.pid, signal.SIGINT)
    assert worker.call("echo", "still here") == "still here"


# --- malformed input ----------------------------------------------------------------


@pytest.mark.parametrize(("data", "text"), [
    (b"\xff\xff\xff\xff", "exceeds max_frame_size"),
    (b"\x00\x00\x00\x00", "empty frame"),
    (b"\x00\x00\x00\x05{oops", "not valid JSON"),
    (b"\x00\x00\x00\x02[]", "got list"),
    (encode_frame({"id": 0, "command": "ping"}), "id must be an integer >= 1"),
    (encode_frame({"id": 1}), "missing command"),
])
def test_malformed_input_exits_4(worker: WorkerProcess, data: bytes, text: str) -> None:
    worker.send_raw(data)
    response = parse_response(worker.read_message())
    assert response.id == 0 and response.error is not None
    assert response.error.type == "ProtocolError"
    assert text in response.error.message
    assert worker.wait_exit() == runtime.EXIT_PROTOCOL_ERROR


def test_oversized_request_rejected_before_its_body(spawn: Any) -> None:
    w = spawn("--max-frame-size", "2048")
    w.hello()
    w.send_raw((4096).to_bytes(4, "big"))  # header only: the worker must not wait for 4 KiB
    error = parse_response(w.read_message()).error
    assert error is not None and "exceeds max_frame_size=2048" in error.message
    assert w.wait_exit() == runtime.EXIT_PROTOCOL_ERROR


def test_the_hello_carries_the_declared_argument_shapes(spawn: Any) -> None:
    w = spawn()
    hello = w.hello()
    assert hello["schemas"]["sleep"]["required"] == ["seconds"]
    assert set(hello["schemas"]) <= set(hello["commands"])


def test_a_hello_too_big_for_its_shapes_is_sent_without_them(spawn: Any) -> None:
    # The default app's shapes take more than 1 KiB: the worker still starts.
    w = spawn("--max-frame-size", "1024")
    hello = w.hello()
    assert "schemas" not in hello and "sleep" in hello["commands"]
    assert w.call("echo", [1]) == [1]
    w.close_stdin()
    assert w.wait_exit() == 0
    assert "hello sent without its argument shapes" in w.stderr_text()


def test_garbage_corrupts_the_frame_channel(worker: WorkerProcess) -> None:
    start = len(worker.raw)  # just after the hello
    worker.decoding = False
    worker.send("garbage", {"data": "NOT A FRAME"})
    assert worker.read_raw(start, 11) == b"NOT A FRAME"
    # ...followed by the (now misaligned) response frame, as the handler returned.
    rest = worker.read_raw(start + 11, 4)
    assert int.from_bytes(rest, "big") > 0


# --- programs and sessions --------------------------------------------------------------


def _program(program_id: str, handler: str = "echo", inputs: tuple[str, ...] = ("a",),
             outputs: tuple[str, ...] = ("b",)) -> dict[str, Any]:
    return {"id": program_id, "signature": {"inputs": list(inputs), "outputs": list(outputs)},
            "handler": handler}


def test_list_programs_is_a_map_with_total_count(worker: WorkerProcess) -> None:
    assert worker.call("list_programs") == {"programs": [], "total_count": 0}
    worker.call("create_program", _program("p1"))
    worker.call("create_program", _program("p2", "sum", ("x", "y"), ("total",)))
    listing = worker.call("list_programs", {})
    assert listing["total_count"] == len(listing["programs"]) == 2
    assert [p["id"] for p in listing["programs"]] == ["p1", "p2"]
    for info in listing["programs"]:
        assert {"id", "signature", "handler"} <= set(info)


def test_program_lifecycle(worker: WorkerProcess) -> None:
    info = worker.call("create_program", _program("adder", "sum", ("x", "y"), ("total",)),
                       session="s")
    assert info["id"] == "adder" and info["handler"] == "sum"
    assert info["signature"] == {"inputs": ["x", "y"], "outputs": ["total"]}
    out = worker.call("execute_program", {"id": "adder", "inputs": {"x": 2, "y": 3.5}},
                      session="s")
    assert out == {"outputs": {"total": 5.5}}
    assert worker.call("get_program_info", {"id": "adder"}, session="s")["executions"] == 1
    assert worker.error("create_program", _program("adder"), session="s")["type"] \
        == "ProgramExists"
    assert worker.call("delete_program", {"id": "adder"}, session="s") == {"deleted": True}
    for command in ("execute_program", "get_program_info", "delete_program"):
        error = worker.error(command, {"id": "adder", "inputs": {}}, session="s")
        assert error["type"] == "ProgramNotFound"
        assert "'adder'" in error["message"]


def test_sessions_are_isolated(worker: WorkerProcess) -> None:
    worker.call("create_program", _program("mine", "upper"), session="alice")
    assert worker.call("list_programs", session="bob")["total_count"] == 0
    assert worker.call("list_programs")["total_count"] == 0  # the anonymous session
    assert worker.error("execute_program", {"id": "mine", "inputs": {"a": "x"}},
                        session="bob")["type"] == "ProgramNotFound"
    worker.call("create_program", _program("mine", "length"), session="bob")  # same id is fine
    assert worker.call("execute_program", {"id": "mine", "inputs": {"a": "abc"}},
                       session="alice") == {"outputs": {"b": "ABC"}}
    assert worker.call("execute_program", {"id": "mine", "inputs": {"a": "abc"}},
                       session="bob") == {"outputs": {"b": 3}}


def test_create_program_validation(worker: WorkerProcess) -> None:
    bad = [
        None,
        {"id": "", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"},
        {"id": "p", "signature": {"inputs": ["a"]}, "handler": "echo"},
        {"id": "p", "signature": {"inputs": ["a", "a"], "outputs": ["b", "c"]},
         "handler": "echo"},
        {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "eval"},
        {"id": "p", "signature": {"inputs": ["a", "b"], "outputs": ["c"]}, "handler": "echo"},
        {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b", "c"]}, "handler": "sum"},
        {"id": "p", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo",
         "extra": 1},
    ]
    for args in bad:
        error = worker.error("create_program", args)
        assert error["type"] == "ValueError", (args, error)
    assert worker.call("list_programs")["total_count"] == 0


# --- load and fault commands -------------------------------------------------------------


def test_load_commands(worker: WorkerProcess) -> None:
    assert worker.call("echo", {"nested": [1, {"a": None}]}) == {"nested": [1, {"a": None}]}
    assert worker.call("sleep", {"seconds": 0.01}) == {"slept": 0.01}
    assert worker.call("cpu", {"n": 1000})["n"] == 1000
    assert worker.error("sleep", {"seconds": -1})["type"] == "ValueError"
    assert worker.error("cpu", {"n": "many"})["type"] == "ValueError"


def test_alloc_grows_rss_until_the_session_is_cleaned_up(worker: WorkerProcess) -> None:
    before = worker.call("health")["rss_mb"]
    result = worker.call("alloc", {"mb": 64}, session="mem")
    assert result["allocated_mb"] == 64 and result["held_mb"] == 64
    assert result["rss_mb"] - before > 50
    assert worker.call("cleanup_session", {"session": "mem"}) == {"removed": True}
    assert worker.call("health")["rss_mb"] - before < 30


def test_hang_blocks_until_killed(worker: WorkerProcess) -> None:
    worker.send("hang", {})
    with pytest.raises(TimeoutError):
        worker.read_message(timeout=0.3)


def test_process_group_kill_takes_the_grandchild_down(worker: WorkerProcess) -> None:
    child_pid = worker.call("spawn_child", {"seconds": 60})["child_pid"]
    assert pid_alive(child_pid)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait_exit()
    try:
        assert wait_gone(child_pid, timeout=5)
    finally:
        if pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        reap_if_ours(child_pid)


# --- the orphan watchdog ---------------------------------------------------------------

# The intermediate parent: starts a worker in its own session, makes it busy in
# a long `sleep`, prints the worker's pid and waits to be killed.
INTERMEDIATE = textwrap.dedent("""
    import os, subprocess, sys
    from engine.protocol import FrameDecoder, encode_frame, make_request

    worker = subprocess.Popen(
        [sys.executable, "-m", "engine.workers.runtime", "--app", "engine.workers.programs",
         "--worker-id", "orphan"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    decoder = FrameDecoder()

    def read_message():
        while (message := decoder.next_message()) is None:
            decoder.feed(os.read(worker.stdout.fileno(), 65536))
        return message

    read_message()  # the hello
    # Both requests in one write: once the noise reply is back, the sleep is
    # already buffered in the worker and it goes straight into the handler.
    os.write(worker.stdin.fileno(),
             encode_frame(make_request(1, "noise", {"text": "busy"}))
             + encode_frame(make_request(2, "sleep", {"seconds": 60})))
    assert read_message()["id"] == 1
    print(worker.pid, flush=True)
    sys.stdin.read()  # block until the test kills us
""")


def test_stdin_closed_while_busy_ends_the_worker(worker: WorkerProcess) -> None:
    # What a remote worker sees when its pool's process is SIGKILLed: the
    # launcher (ssh) lives on, its parent (sshd) too, only stdin closes. The
    # handler sleeps for 60 s; the watchdog ends it after STDIN_EOF_GRACE.
    worker.send_raw(encode_frame(make_request(1, "noise", {"text": "busy"}))
                    + encode_frame(make_request(2, "sleep", {"seconds": 60})))
    assert worker.read_message()["id"] == 1  # the sleep is next, already buffered
    worker.close_stdin()
    assert worker.wait_exit(timeout=TIMEOUT) == runtime.EXIT_ORPHANED


def test_an_idle_worker_exiting_on_eof_keeps_its_atexit_time(spawn: Any,
                                                              app_dir: Path) -> None:
    # The watchdog's stdin rule must not cut a clean exit: an idle worker
    # reads the EOF, and its atexit handlers may take longer than the grace.
    env = write_app(app_dir, "slow_exit_app", f"""
        import atexit, sys, time
        from engine.workers.app import App
        app = App("slow_exit")
        atexit.register(lambda: (time.sleep({runtime.STDIN_EOF_GRACE * 3}),
                                 sys.stderr.write("atexit done\\n")))
    """)
    w = spawn(app="slow_exit_app", env=env)
    w.hello()
    w.close_stdin()
    assert w.wait_exit() == runtime.EXIT_OK
    assert "atexit done" in w.stderr_text()


def test_watchdog_ends_an_orphaned_busy_worker() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=REPO,
    )
    assert parent.stdout is not None and parent.stdin is not None and parent.stderr is not None
    worker_pid = None
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), parent.stderr.read() if parent.poll() is not None else line
        worker_pid = int(line)
        assert pid_alive(worker_pid)
        parent.kill()
        parent.wait()
        assert wait_gone(worker_pid, timeout=2.0), "orphaned worker still alive after 2 s"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker_pid is not None:
            if pid_alive(worker_pid):
                os.kill(worker_pid, signal.SIGKILL)
                wait_gone(worker_pid, timeout=5)
            reap_if_ours(worker_pid)
        for pipe in (parent.stdin, parent.stdout, parent.stderr):
            pipe.close()
