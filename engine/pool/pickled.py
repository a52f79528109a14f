"""run_sync's parent end of the pickle codec: a call in, a value (or the
function's own exception) out.

Pickled before anything is reserved or written: what cannot be pickled
raises :class:`~engine.errors.ArgumentTypeError` (a ``TypeError``) and no
worker is touched. A reply is unpickled here; a function's exception is
raised as itself (its own type and args) with the worker's traceback as its
``__cause__`` (:class:`~engine.errors.RemoteTraceback`), the way a JSON
command's error carries it. An exception that did not survive pickling comes
back as ``RemoteError[builtin]`` built from its type name, message and
traceback (still caught by ``except ValueError`` for a ``ValueError``).
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import Any

from engine.errors import ArgumentTypeError, ProtocolError, RemoteError, RemoteTraceback
from engine.protocol import PICKLE_COMMAND, Pickled

PROTOCOL = 5
_dumps = pickle.dumps
# A worker runs this process's main script as ``__mp_main__`` (see
# engine.workers.pickled), so the classes and functions it sends back from
# there are named so: the same alias as multiprocessing's, set when it is
# imported.
if "__main__" in sys.modules:
    sys.modules.setdefault("__mp_main__", sys.modules["__main__"])


def pickle_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Pickled:
    """``(fn, args)`` pickled, or ArgumentTypeError saying what went wrong."""
    if not callable(fn):
        # Refused here: a value that pickles (42, a string) would otherwise
        # reach the worker and fail there, after a worker was reserved.
        raise ArgumentTypeError(f"{_short(fn)} is not callable; pass the function itself "
                                "(run_sync(fn, *args), not run_sync(fn(*args)))",
                                command="run_sync", path="fn")
    try:
        return Pickled(_dumps((fn, args), PROTOCOL))
    except Exception as exc:  # PicklingError, TypeError, AttributeError (local objects), ...
        problem = (f"{_short(fn)} or its arguments cannot be pickled "
                   f"({type(exc).__name__}: {exc}); pass a function defined at the top "
                   "level of a module (functools.partial of one works) and picklable "
                   "arguments")
        raise ArgumentTypeError(problem, command="run_sync", path="fn, args") from exc


def unpickle_reply(reply: Any, worker_id: str) -> Any:
    """The function's value, or raise what it raised."""
    if type(reply) is not Pickled:
        raise ProtocolError(f"worker {worker_id} answered {PICKLE_COMMAND!r} with a JSON "
                            "value instead of a pickle frame", worker_id=worker_id)
    value = pickle.loads(reply.data)
    if not reply.raised:
        return value
    type_name, message, traceback, pickled = value
    error: BaseException | None = None
    why = "it could not be pickled in the worker"
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception as exc:  # e.g. its class cannot be imported here
            error = None
            why = f"it could not be rebuilt here ({type(exc).__name__}: {exc})"
    if not isinstance(error, BaseException):
        remote = RemoteError.from_reply(type=type_name, message=message, traceback=traceback,
                                        command="run_sync", worker_id=worker_id)
        remote.add_note(f"engine: the function raised {type_name}, passed on as "
                        f"{type(remote).__name__} because {why}; make the exception class "
                        "importable and its args enough to rebuild it to get it as itself")
        raise remote from remote.__cause__
    raise error from RemoteTraceback(traceback, worker_id=worker_id)


def _short(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
