"""The default worker app (design section 5): ``--app engine.workers.programs``.

Two groups of commands:

* *Programs*, the counterpart of the Python bridge's programs: a program has an
  id, a signature (input and output field names) and one of the built-in
  handlers in :data:`PROGRAM_HANDLERS`. Programs live in the session's state,
  so sessions never see each other's programs (calls without a session share
  one anonymous namespace).
* *Load and fault* commands for load tests and fault injection: ``echo``,
  ``sleep``, ``cpu``, ``alloc``, ``fail``, ``crash``, ``hang``, ``noise``,
  ``garbage``, ``spawn_child``.

Standard library only, like everything that runs inside a worker.
"""

from __future__ import annotations

import math
import os
import sys
import time

from engine.workers.app import App, Context, RequestAbandoned, rss_mb

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    ProgramFn = Callable[[list[Any]], list[Any]]

app = App("programs")

MAX_ID_LENGTH = 200
_PROGRAM_KEYS = frozenset({"id", "signature", "handler", "description"})


class ProgramNotFound(LookupError):
    """No program with that id exists in this session."""


class ProgramExists(ValueError):
    """``create_program`` with an id this session already uses."""


# --- argument shapes ------------------------------------------------------------
# What each command accepts, declared for the hello (engine.workers.schema):
# the test kit draws campaign arguments from these. Load commands are bounded
# to what a test can afford (a campaign must not sleep for an hour).

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 10},
          "maxItems": 4}
_NO_ARGS = {"anyOf": [{"type": "null"}, {"type": "object"}]}


def _takes(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**required, **(optional or {})},
            "required": list(required)}


# --- argument validation --------------------------------------------------------


def object_args(args: Any, command: str) -> dict[str, Any]:
    """A command's args as an object (None means {}); the test kit's fakes use
    it too, so both give the same error."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise TypeError(f"{command}: args must be an object, got {type(args).__name__}")
    return args


def _string(args: dict[str, Any], key: str, command: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{command}: {key!r} must be a string, got {value!r}")
    return value


def _number(args: dict[str, Any], key: str, command: str, default: float | None = None) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{command}: {key!r} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{command}: {key!r} must be >= 0, got {value!r}")
    return float(value)


def _integer(args: dict[str, Any], key: str, command: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{command}: {key!r} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{command}: {key!r} must be >= 0, got {value!r}")
    return value


# --- program handlers ------------------------------------------------------------
# Each takes the input values in signature order and returns the output values
# in signature order. Arity rules are checked at create time (_ARITY).


def _echo(values: list[Any]) -> list[Any]:
    return list(values)


def _sum(values: list[Any]) -> list[Any]:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"sum: inputs must be numbers, got {value!r}")
    return [sum(values)]


def _concat(values: list[Any]) -> list[Any]:
    return ["".join(_text(value, "concat") for value in values)]


def _upper(values: list[Any]) -> list[Any]:
    return [_text(value, "upper").upper() for value in values]


def _length(values: list[Any]) -> list[Any]:
    for value in values:
        if not isinstance(value, (str, list, dict)):
            raise TypeError(f"length: inputs must be strings, lists or objects, got {value!r}")
    return [len(value) for value in values]


def _text(value: Any, handler: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{handler}: inputs must be strings, got {value!r}")
    return value


#: Built-in program handlers, by the name ``create_program`` accepts.
PROGRAM_HANDLERS: dict[str, ProgramFn] = {
    "echo": _echo, "sum": _sum, "concat": _concat, "upper": _upper, "length": _length,
}
# "same": as many outputs as inputs (positional); "one": any inputs, one output.
_ARITY = {"echo": "same", "upper": "same", "length": "same", "sum": "one", "concat": "one"}


# --- program store ----------------------------------------------------------------


def _programs(ctx: Context) -> dict[str, dict[str, Any]]:
    programs: dict[str, dict[str, Any]] = ctx.state.setdefault("programs", {})
    return programs


def _lookup(ctx: Context, program_id: str) -> dict[str, Any]:
    program = _programs(ctx).get(program_id)
    if program is None:
        where = f"session {ctx.session!r}" if ctx.session is not None else "the anonymous session"
        raise ProgramNotFound(f"no program {program_id!r} in {where}")
    return program


def _info(program: dict[str, Any]) -> dict[str, Any]:
    """A JSON copy, so callers can never mutate the stored program."""
    signature = program["signature"]
    return {
        "id": program["id"],
        "signature": {"inputs": list(signature["inputs"]),
                      "outputs": list(signature["outputs"])},
        "handler": program["handler"],
        "description": program["description"],
        "created_at": program["created_at"],
        "executions": program["executions"],
    }


def _program_id(args: dict[str, Any], command: str) -> str:
    program_id = _string(args, "id", command)
    if not program_id or len(program_id) > MAX_ID_LENGTH:
        raise ValueError(f"{command}: 'id' must have 1 to {MAX_ID_LENGTH} characters, "
                         f"got {len(program_id)}")
    return program_id


def _field_names(signature: dict[str, Any], key: str) -> list[str]:
    names = signature.get(key)
    if not isinstance(names, list):
        raise ValueError(f"create_program: signature[{key!r}] must be a list of names, "
                         f"got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"create_program: signature[{key!r}] names must be non-empty "
                             f"strings, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"create_program: signature[{key!r}] has duplicate names: {names!r}")
    return names


def _signature(args: dict[str, Any]) -> tuple[list[str], list[str]]:
    signature = args.get("signature")
    if not isinstance(signature, dict):
        raise ValueError("create_program: 'signature' must be an object "
                         f"{{'inputs': [...], 'outputs': [...]}}, got {signature!r}")
    extra = set(signature) - {"inputs", "outputs"}
    if extra:
        raise ValueError(f"create_program: unknown signature keys {sorted(extra)}")
    return _field_names(signature, "inputs"), _field_names(signature, "outputs")


def _check_arity(handler: str, inputs: list[str], outputs: list[str]) -> None:
    if not inputs:
        raise ValueError(f"create_program: handler {handler!r} needs at least one input")
    if _ARITY[handler] == "same" and len(outputs) != len(inputs):
        raise ValueError(f"create_program: handler {handler!r} maps inputs to outputs "
                         f"positionally: {len(inputs)} inputs but {len(outputs)} outputs")
    if _ARITY[handler] == "one" and len(outputs) != 1:
        raise ValueError(f"create_program: handler {handler!r} has exactly one output, "
                         f"got {len(outputs)}")


def _handler_name(args: dict[str, Any]) -> str:
    handler = args.get("handler")
    if handler not in PROGRAM_HANDLERS:
        raise ValueError(f"create_program: 'handler' must be one of "
                         f"{sorted(PROGRAM_HANDLERS)}, got {handler!r}")
    assert isinstance(handler, str)
    return handler


# --- program commands -------------------------------------------------------------


@app.command("create_program", args=_takes(
    {"id": _ID, "signature": _takes({"inputs": _NAMES, "outputs": _NAMES}),
     "handler": {"enum": ["echo", "sum", "concat", "upper", "length"]}},
    {"description": {"type": "string", "maxLength": 40}}))
def create_program(args: Any, ctx: Context) -> dict[str, Any]:
    args = object_args(args, "create_program")
    unknown = set(args) - _PROGRAM_KEYS
    if unknown:
        raise ValueError(f"create_program: unknown keys {sorted(unknown)}; "
                         f"allowed: {sorted(_PROGRAM_KEYS)}")
    program_id = _program_id(args, "create_program")
    inputs, outputs = _signature(args)
    handler = _handler_name(args)
    _check_arity(handler, inputs, outputs)
    description = _string(args, "description", "create_program", default="")
    programs = _programs(ctx)
    if program_id in programs:
        raise ProgramExists(f"create_program: program {program_id!r} already exists in this "
                            "session; delete it first or pick another id")
    program = {"id": program_id, "signature": {"inputs": inputs, "outputs": outputs},
               "handler": handler, "description": description,
               "created_at": time.time(), "executions": 0}
    programs[program_id] = program
    return _info(program)


def _input_values(program: dict[str, Any], given: Any) -> list[Any]:
    if not isinstance(given, dict):
        raise ValueError(f"execute_program: 'inputs' must be an object, got {given!r}")
    names: list[str] = program["signature"]["inputs"]
    missing = [name for name in names if name not in given]
    unknown = sorted(set(given) - set(names))
    if missing or unknown:
        raise ValueError(f"execute_program: program {program['id']!r} takes inputs {names}; "
                         f"missing {missing}, unknown {unknown}")
    return [given[name] for name in names]


@app.command("execute_program", args=_takes(
    {"id": _ID}, {"inputs": {"type": "object", "additionalProperties": True}}))
def execute_program(args: Any, ctx: Context) -> dict[str, Any]:
    args = object_args(args, "execute_program")
    program = _lookup(ctx, _program_id(args, "execute_program"))
    values = _input_values(program, args.get("inputs", {}))
    results = PROGRAM_HANDLERS[program["handler"]](values)
    program["executions"] += 1
    return {"outputs": dict(zip(program["signature"]["outputs"], results, strict=True))}


@app.command("list_programs", args=_NO_ARGS)
def list_programs(args: Any, ctx: Context) -> dict[str, Any]:
    object_args(args, "list_programs")
    programs = [_info(program) for program in _programs(ctx).values()]
    return {"programs": programs, "total_count": len(programs)}


@app.command("get_program_info", args=_takes({"id": _ID}))
def get_program_info(args: Any, ctx: Context) -> dict[str, Any]:
    args = object_args(args, "get_program_info")
    return _info(_lookup(ctx, _program_id(args, "get_program_info")))


@app.command("delete_program", args=_takes({"id": _ID}))
def delete_program(args: Any, ctx: Context) -> dict[str, Any]:
    args = object_args(args, "delete_program")
    program_id = _program_id(args, "delete_program")
    _lookup(ctx, program_id)
    del _programs(ctx)[program_id]
    return {"deleted": True}


# --- load and fault commands ------------------------------------------------------


@app.command("echo", args={})  # any JSON value, returned as is
def echo(args: Any, ctx: Context) -> Any:
    return args


@app.command("sleep", args=_takes({"seconds": {"type": "number", "minimum": 0, "maximum": 1}},
                                {"stubborn": {"type": "boolean"}}))
def sleep(args: Any, ctx: Context) -> dict[str, Any]:
    """Sleep ``seconds``. Abandoned, it stops at once (the usual, cooperative
    handler); with ``"stubborn": true`` it ignores that and sleeps on (a
    handler that does not give an abandoned request back)."""
    args = object_args(args, "sleep")
    seconds = _number(args, "seconds", "sleep")
    stubborn = args.get("stubborn", False)
    if not isinstance(stubborn, bool):
        raise ValueError(f"sleep: 'stubborn' must be true or false, got {stubborn!r}")
    if not stubborn:
        time.sleep(seconds)
        return {"slept": seconds}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except RequestAbandoned:
            pass  # deliberately ignored: see the docstring
    return {"slept": seconds}


@app.command("cpu", args=_takes({"n": {"type": "integer", "minimum": 0, "maximum": 100_000}}))
def cpu(args: Any, ctx: Context) -> dict[str, Any]:
    n = _integer(object_args(args, "cpu"), "n", "cpu")
    acc = 0
    for i in range(n):  # deliberately pure-Python work: it holds the GIL
        acc = (acc * 31 + i) % 1_000_003
    return {"n": n, "result": acc}


@app.command("alloc", args=_takes({"mb": {"type": "integer", "minimum": 0, "maximum": 8}}))
def alloc(args: Any, ctx: Context) -> dict[str, Any]:
    """Allocate ``mb`` MiB and keep it in the session state, so RSS really grows.

    The memory is released when the session is cleaned up.
    """
    mb = _integer(object_args(args, "alloc"), "mb", "alloc")
    block = bytearray(mb * 1048576)
    # bytearray() memory comes from calloc, which the kernel maps lazily: write
    # one byte per page so every page becomes resident.
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))
    held: list[bytearray] = ctx.state.setdefault("alloc", [])
    held.append(block)
    return {"allocated_mb": mb, "held_mb": sum(len(b) for b in held) // 1048576,
            "rss_mb": rss_mb()}


@app.command("fail", args=_takes({}, {"message": {"type": "string"}}))
def fail(args: Any, ctx: Context) -> Any:
    message = _string(object_args(args, "fail"), "message", "fail", default="fail requested")
    raise RuntimeError(message)


@app.command("crash", args=_takes({}, {"code": {"type": "integer", "minimum": 0,
                                                             "maximum": 255}}))
def crash(args: Any, ctx: Context) -> Any:
    code = _integer(object_args(args, "crash"), "code", "crash", default=1)
    if code > 255:
        raise ValueError(f"crash: 'code' must be 0..255, got {code}")
    sys.stderr.flush()
    os._exit(code)


@app.command("hang", args={"type": "null"})
def hang(args: Any, ctx: Context) -> Any:
    # Only a kill (or the orphan watchdog) ends this: abandoned, it carries on,
    # so the parent kills the worker once cancel_grace has passed.
    while True:
        try:
            time.sleep(3600)
        except RequestAbandoned:
            pass


@app.command("noise", args=_takes({}, {"text": {"type": "string"}}))
def noise(args: Any, ctx: Context) -> dict[str, Any]:
    text = _string(object_args(args, "noise"), "text", "noise", default="noise")
    print(text)  # fd 1 is stderr inside a worker: this must not corrupt framing
    sys.stdout.flush()
    return {"printed": len(text)}


@app.command("garbage", args=_takes({"data": {"type": "string"}}))
def garbage(args: Any, ctx: Context) -> dict[str, Any]:
    """FAULT INJECTION: write raw bytes onto the frame channel, then answer normally."""
    data = _string(object_args(args, "garbage"), "data", "garbage").encode("utf-8")
    ctx.write_raw(data)
    return {"written": len(data)}


@app.command("spawn_child", args=_takes(
    {"seconds": {"type": "number", "minimum": 0, "maximum": 1}}))
def spawn_child(args: Any, ctx: Context) -> dict[str, Any]:
    """Start a grandchild that sleeps; tests use it to check process-group kills."""
    import subprocess  # lazily: only this fault command needs it

    seconds = _number(object_args(args, "spawn_child"), "seconds", "spawn_child")
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds!r})"],
        # No pipes of ours: the grandchild must not hold the parent's stderr
        # pipe open, nor ever read requests meant for this worker.
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    children: list[subprocess.Popen[bytes]] = ctx.state.setdefault("children", [])
    children.append(child)  # keep the Popen so the finished child gets reaped
    return {"child_pid": child.pid}
