"""The structural type every discoverable service satisfies."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Service"]


@runtime_checkable
class Service(Protocol):
    """Anything discovery can hand out: a pool, a single bridge, a test stub.

    ``kind`` is ``"pool"`` or ``"bridge"`` for the library's own services
    (other kinds can be registered and found by name or by kind, but
    :func:`~engine.discovery.detect_service` only picks pools and bridges).
    ``closed`` turns true once the service stops serving calls; discovery then
    treats it as absent.

    The members are read-only properties so that implementations may use plain
    attributes, class attributes or properties. ``call`` declares only the
    arguments discovery's callers pass; an implementation may accept more
    keyword-only options (the pool adds ``timeout`` and ``retry``) and still
    satisfies this protocol.
    """

    @property
    def kind(self) -> str:
        """``"pool"`` or ``"bridge"`` (or another kind, found only by name or kind)."""
        ...

    @property
    def name(self) -> str | None:
        """The service's own name, if it has one (used in messages only)."""
        ...

    @property
    def closed(self) -> bool:
        """True once the service no longer serves calls."""
        ...

    async def call(self, command: str, args: Any = None, *, session: str | None = None) -> Any:
        """Send ``command`` with ``args`` (for ``session``) and return the worker's result."""
        ...
