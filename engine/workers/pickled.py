"""The worker's end of ``run_sync``: run a pickled function call, pickle what it gives.

A pickle request's ``args`` is a :class:`~engine.protocol.Pickled` holding
``(fn, args)``; the reply is a pickle frame built here (:class:`ReadyFrame`),
which the runtime writes once the handler is done (never from inside it: an
abandon signal must not cut a frame in half).

* The call returns: a PICKLE_RESULT frame holding the value. A value that
  cannot be pickled is reported as what pickling raised (a ``TypeError``, say),
  with a note; the worker carries on.
* The call raises (unpickling the call included: a function the worker cannot
  import): a PICKLE_RAISED frame holding ``(type name, message, traceback
  text, pickled exception or None)``. The exception is pickled on its own so
  that one which cannot be pickled, or unpickled by the parent, still reports
  its type, message and traceback.
* A result frame beyond ``max_pickle_frame_size``: a JSON ``ResultTooLarge``
  error, as for JSON commands.

Functions of the parent's ``__main__`` (a script's own functions): pickle
names them ``__main__.fn``, which the worker's ``__main__`` (the runtime) does
not hold. The first time a call needs one, the worker runs the parent's main
module (its path or module name, from ``MAIN_VARIABLE``) as ``__mp_main__``
and makes it the worker's ``__main__`` for pickle, as multiprocessing's spawn
does; the script must keep its own start-up under ``if __name__ ==
"__main__":`` (trio-parallel and anyio need that too).

Unpickling runs code: the worker trusts its parent, which started it.
Standard library only (``pickle`` is imported by the first call).
"""

from __future__ import annotations

import os
import sys

from engine.protocol import (
    PICKLE_COMMAND,
    PICKLE_RAISED,
    PICKLE_RESULT,
    Pickled,
    encode_frame,
    encode_pickle_frame,
    error_response,
)
from engine.workers.app import Context, enter_context

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from typing import Any

PROTOCOL = 5
MAX_TRACEBACK = 65536
# A result this large is written after its header rather than joined to it.
_SPLIT_AT = 1 << 16
#: How the parent's main module is found: "path:/abs/script.py" or
#: "module:pkg.mod" (set by the parent at spawn, removed at once here).
MAIN_VARIABLE = "ENGINE_WORKER_MAIN"


class ReadyFrame:
    """A handler's reply that is a whole frame already, in one or more parts
    that the runtime writes in order (a large payload is not copied to be
    joined to its header)."""

    __slots__ = ("parts",)

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts


def make_handler(max_size: int,
                 format_exception: Callable[[BaseException, int], str]) -> Callable[
                     [Any, Context], ReadyFrame]:
    """The handler of PICKLE_COMMAND for a worker whose pickle frames are at
    most ``max_size`` bytes; ``format_exception(exc, skip_frames)`` is the
    runtime's traceback formatter."""
    # pickle is imported by the first call, not at start-up: importing it
    # costs a worker's spawn-to-hello a few milliseconds.
    codec: list[Callable[..., Any]] = []  # [loads, dumps] once imported
    parent_main = [os.environ.pop(MAIN_VARIABLE, "")]  # emptied once it is loaded

    def load_call(data: Any) -> Any:
        if not codec:
            import pickle

            codec[:] = (pickle.loads, pickle.dumps)
        loads = codec[0]
        try:
            return loads(data)
        except AttributeError:
            # "Can't get attribute 'fn' on <module ...>": perhaps a function of
            # the parent's script. Load that script once, then try again.
            if not parent_main[0]:
                raise
            _adopt_parent_main(parent_main[0])
            parent_main[0] = ""
            return loads(data)

    def run_pickled(args: Any, ctx: Context) -> ReadyFrame:
        if type(args) is not Pickled or args.raised:
            raise TypeError(f"{PICKLE_COMMAND!r} comes in pickle frames only "
                            "(use pool.run_sync or engine.run_sync)")
        request_id = ctx.request_id
        previous = enter_context(ctx)
        fn: Any = None
        try:
            fn, fn_args = load_call(args.data)
            args.data = b""  # the arguments' bytes are not needed any more
            result = fn(*fn_args)
            if type(result) in _ASYNC_RESULTS:
                _refuse_async(fn, result)
        except Exception as exc:  # RequestAbandoned is not: the runtime answers Cancelled
            return raised(request_id, exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            # The function's own (sys.exit(), a raised KeyboardInterrupt; a
            # real Ctrl-C is the parent's: workers ignore SIGINT). Passed on
            # as the caller's, as trio.to_thread.run_sync does, and the worker
            # carries on: exiting would cost it and its other sessions.
            where = "while loading the call" if fn is None else f"by {_name(fn)}"
            _note(exc, f"engine: raised {where} in worker {ctx.worker_id}, which carries "
                  "on (it did not exit)")
            return raised(request_id, exc)
        finally:
            enter_context(previous)
        dumps = codec[1]
        try:
            payload = dumps(result, PROTOCOL)
        except Exception as exc:
            _note(exc, f"engine: raised while pickling the result of {_name(fn)}; "
                  "return a value pickle can carry")
            return raised(request_id, exc)
        try:
            if len(payload) < _SPLIT_AT:
                return ReadyFrame(encode_pickle_frame(request_id, PICKLE_RESULT, payload,
                                                      None, max_size))
            head = encode_pickle_frame(request_id, PICKLE_RESULT, b"", None, max_size,
                                       payload_size=len(payload))
            return ReadyFrame(head, payload)
        except ValueError:
            return ReadyFrame(encode_frame(error_response(
                request_id, "ResultTooLarge",
                f"the result of {_name(fn)} pickles to {len(payload)} bytes, more than "
                f"max_pickle_frame_size={max_size}; return less data per call or raise "
                "max_pickle_frame_size")))

    def raised(request_id: int, exc: BaseException) -> ReadyFrame:
        tb = format_exception(exc, 1)
        if len(tb) > MAX_TRACEBACK:
            tb = tb[-MAX_TRACEBACK:]  # the innermost frames say the most
        try:
            message = str(exc)
        except Exception:
            message = f"<unprintable {type(exc).__name__}>"
        if not codec:
            import pickle

            codec[:] = (pickle.loads, pickle.dumps)
        dumps = codec[1]
        try:
            pickled: bytes | None = dumps(exc, PROTOCOL)
        except Exception:
            pickled = None  # the parent raises RemoteError[builtin] built from the text
        payload = dumps((type(exc).__name__, message, tb, pickled), PROTOCOL)
        try:
            return ReadyFrame(encode_pickle_frame(request_id, PICKLE_RAISED, payload, None,
                                                  max_size))
        except ValueError:
            return ReadyFrame(encode_frame(error_response(
                request_id, type(exc).__name__, message[:8192], tb)))

    return run_pickled


_adopting: list[str] = []  # the parent's main module, while it runs here


def adopting_parent_main() -> str | None:
    """The parent's main script (path or module) while this worker runs it to
    find a function (see the module doc), else None. A script without the
    ``if __name__ == "__main__":`` guard starts its own pool then: the pool
    refuses, saying so (``engine.pool.pool.refuse_while_adopting``)."""
    return _adopting[0] if _adopting else None


def _adopt_parent_main(spec: str) -> None:
    """Run the parent's main module as ``__mp_main__`` and make it this
    process's ``__main__`` as pickle sees it (``sys.modules``); the runtime's
    own code keeps its globals."""
    import runpy
    import types

    kind, _, target = spec.partition(":")
    _adopting[:] = [target]
    try:
        if kind == "module":
            namespace = runpy.run_module(target, run_name="__mp_main__", alter_sys=False)
        else:
            namespace = runpy.run_path(target, run_name="__mp_main__")
    finally:
        _adopting.clear()
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__mp_main__"] = sys.modules["__main__"] = module


def _note(exc: BaseException, note: str) -> None:
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(note)


async def _coroutine_function() -> None:
    pass


async def _async_generator_function() -> AsyncIterator[None]:
    yield


def _async_result_types() -> frozenset[type]:
    """The types an async function's call returns (``types`` is not imported
    for them: a worker's start-up counts its imports)."""
    coroutine = _coroutine_function()
    coroutine.close()
    return frozenset((type(coroutine), type(_async_generator_function())))


_ASYNC_RESULTS = _async_result_types()


def _refuse_async(fn: object, result: Any) -> None:
    """``fn`` is async: its call made a coroutine (or an async generator) and
    ran none of its body. A coroutine is closed here (no "never awaited"
    warning in the worker's output), and the caller is told, as
    trio.to_thread.run_sync does."""
    if not hasattr(result, "aclose"):
        result.close()
    raise TypeError(f"run_sync runs a synchronous function, but {_name(fn)} is asynchronous "
                    f"(calling it made a {type(result).__name__!r} object and ran none of it); "
                    "await it in the parent instead, or pass a synchronous function (one "
                    "that calls trio.run(...) runs async code in the worker)")


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)[:80]


__all__ = ["ReadyFrame", "adopting_parent_main", "make_handler"]
