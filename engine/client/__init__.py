"""Calls through discovery, and typed helpers for the default app.

:func:`execute` sends one command to a service: the one given, the one
registered under a given name, or whatever :func:`engine.discovery.detect_service`
finds (a live pool, else a live bridge). The helpers below it speak the default
app (``engine.workers.programs``) and turn its answers into the typed values of
:mod:`engine.client.shapes`, so a malformed answer is a ``ResponseShapeError``, never
a ``KeyError`` three frames later.

Arguments the helpers send, as ``engine.workers.programs`` reads them:

* ``create_program``: ``{"id", "signature": {"inputs", "outputs"}, "handler"}``
  (plus ``"description"`` when given)
* ``execute_program``: ``{"id", "inputs": {name: value}}``
* ``get_program_info``, ``delete_program``: ``{"id"}``
* ``list_programs``: ``{}``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
from engine.discovery import Service, detect_service
from engine.errors import RemoteError, ResponseShapeError

__all__ = [
    "ServiceRef",
    "create_program",
    "delete_program",
    "execute",
    "execute_program",
    "get_program_info",
    "list_programs",
    "ping",
    "resolve_service",
]

#: What every function here accepts as ``service``: the service itself, the
#: name it is registered under, or ``None`` to let discovery choose.
ServiceRef = Service | str | None


def resolve_service(service: ServiceRef = None) -> Service:
    """Turn a :data:`ServiceRef` into a service, through discovery when needed.

    A service object is used as given, even if closed: its own error
    (``PoolClosed``) says more than discovery could.
    """
    if service is None:
        return detect_service()
    if isinstance(service, str):
        return detect_service(service)
    return service


async def execute(
    command: str, args: Any = None, session: str | None = None, service: ServiceRef = None
) -> Any:
    """Send ``command`` with ``args`` to a service and return the raw result.

    Raises ``BridgeUnavailable`` when discovery finds nothing, and whatever the
    service raises (``RemoteError``, ``PoolTimeout``, ...) unchanged.
    """
    return await resolve_service(service).call(command, args, session=session)


async def create_program(
    program_id: str, inputs: Sequence[str], outputs: Sequence[str], handler: str,
    *, description: str | None = None, session: str | None = None,
    service: ServiceRef = None,
) -> ProgramInfo:
    """Create a program in the default app; returns the program as the worker stored it.

    The worker validates the rest (known handler, arity, unique names) and
    answers a ``RemoteError`` when something is off.
    """
    args: dict[str, Any] = {
        "id": program_id,
        "signature": {"inputs": _names(inputs, "inputs"), "outputs": _names(outputs, "outputs")},
        "handler": handler,
    }
    if description is not None:  # the app rejects unknown keys, so send only what is set
        args["description"] = description
    answer = await execute("create_program", args, session, service)
    return _same_program(parse_program_info(answer, what="create_program answer"), program_id,
                         "create_program answer")


async def execute_program(
    program_id: str, inputs: Mapping[str, Any],
    *, session: str | None = None, service: ServiceRef = None,
) -> ExecutionResult:
    """Run a program on ``inputs`` (a map of input field to value); returns its outputs."""
    args = {"id": program_id, "inputs": dict(inputs)}
    return parse_execution(await execute("execute_program", args, session, service))


async def list_programs(
    *, session: str | None = None, service: ServiceRef = None
) -> ProgramList:
    """List the session's programs (accepts the current map and the legacy list answer)."""
    return parse_program_list(await execute("list_programs", {}, session, service))


async def get_program_info(
    program_id: str, *, session: str | None = None, service: ServiceRef = None
) -> ProgramInfo:
    """Describe one program."""
    answer = await execute("get_program_info", {"id": program_id}, session, service)
    return _same_program(parse_program_info(answer, what="get_program_info answer"), program_id,
                         "get_program_info answer")


async def delete_program(
    program_id: str, *, session: str | None = None, service: ServiceRef = None
) -> bool:
    """Delete a program; True if it existed, False if the worker did not know it.

    The default app answers an unknown id with a ``ProgramNotFound`` error; that
    one error becomes ``False`` (the program is gone either way), every other
    ``RemoteError`` propagates.
    """
    try:
        answer = await execute("delete_program", {"id": program_id}, session, service)
    except RemoteError as error:
        if error.type == "ProgramNotFound":
            return False
        raise
    return parse_deleted(answer)


async def ping(*, session: str | None = None, service: ServiceRef = None) -> PingInfo:
    """Ping a worker (the one bound to ``session``, if given); returns its pid and id."""
    return parse_ping(await execute("ping", None, session, service))


def _names(names: Sequence[str], field: str) -> list[str]:
    # A bare string is a Sequence[str]: "ab" would silently become ["a", "b"].
    if isinstance(names, str):
        raise TypeError(f"{field} must be a sequence of field names, not a string: {names!r}")
    return list(names)


def _same_program(info: ProgramInfo, program_id: str, what: str) -> ProgramInfo:
    # An answer about another program means the worker mixed up requests.
    if info.id != program_id:
        raise ResponseShapeError(
            what=what, problem=f"id is {info.id!r}, expected {program_id!r}", value=info.id
        )
    return info
