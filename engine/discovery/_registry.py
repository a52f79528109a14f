"""The per-process registry of named services.

A module-level dict, mutated only by synchronous code: no ``await`` happens
while it is read or written, so every operation is atomic with respect to Trio
tasks and no lock is needed. Nothing in it is tied to a particular
``trio.run`` (no RunVar, no token), so several runs in a row share it safely;
entries leave through the ``register`` context manager, which always runs its
exit, so a finished run leaves nothing behind.

Insertion order is registration order (a replaced entry is deleted, then
re-inserted at the end), which is what "most recently registered" means.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from engine.discovery._service import Service

__all__ = ["lookup_kind", "register", "registered", "whereis"]

_S = TypeVar("_S", bound=Service)


class _Entry:
    """One registration. Its identity tells an old registration from its replacement."""

    __slots__ = ("name", "service")

    def __init__(self, name: str, service: Service) -> None:
        self.name = name
        self.service = service


_registry: dict[str, _Entry] = {}


def _validate(name: str, service: Service) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a service name must be a non-empty string, got {name!r}")
    if not isinstance(service, Service):
        raise TypeError(
            f"{service!r} is not a service: it needs kind, name, closed and an async call()"
        )


@contextmanager
def register(name: str, service: _S) -> Iterator[_S]:
    """Register ``service`` as ``name`` for the duration of the ``with`` block.

    Registration happens on entry and is undone on exit, also when the block
    raises or is cancelled. A name held by a live service raises
    ``ValueError``; a name held by a closed service is taken over (that
    service's own exit then leaves the new registration alone).
    """
    _validate(name, service)
    current = _registry.get(name)
    if current is not None and not current.service.closed:
        raise ValueError(
            f"a live {current.service.kind} is already registered as {name!r}; "
            "close it first or pick another name"
        )
    entry = _Entry(name, service)
    _registry.pop(name, None)  # re-insert at the end: it is now the most recent
    _registry[name] = entry
    try:
        yield service
    finally:
        # Only remove our own entry: a closed service may have been replaced
        # under the same name while this block was still running.
        if _registry.get(name) is entry:
            del _registry[name]


def whereis(name: str) -> Service | None:
    """The live service registered as ``name``, or ``None`` if absent or closed."""
    entry = _registry.get(name)
    if entry is None or entry.service.closed:
        return None
    return entry.service


def lookup_kind(kind: str) -> Service | None:
    """The most recently registered live service of ``kind``, or ``None``."""
    for entry in reversed(_registry.values()):
        if entry.service.kind == kind and not entry.service.closed:
            return entry.service
    return None


def registered() -> dict[str, Service]:
    """A snapshot ``{name: service}`` of every registration, closed ones included,
    oldest first. For debugging; mutating it does not touch the registry."""
    return {name: entry.service for name, entry in _registry.items()}
