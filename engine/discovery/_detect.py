"""``detect_service``: pick the service a client call should go to."""

from __future__ import annotations

from engine.discovery._registry import lookup_kind, registered, whereis
from engine.discovery._service import Service
from engine.errors import BridgeUnavailable

__all__ = ["PREFERENCE", "detect_service"]

#: Kinds ``detect_service()`` considers, best first: a pool spreads load and
#: survives a worker crash, a single bridge does neither.
PREFERENCE = ("pool", "bridge")


def detect_service(name: str | None = None) -> Service:
    """The service to call: the one named ``name``, else a live pool, else a live bridge.

    Raises :class:`~engine.errors.BridgeUnavailable` saying why nothing fits:
    nothing registered, the named service absent or closed, or every candidate
    closed.
    """
    if name is not None:
        return _by_name(name)
    for kind in PREFERENCE:
        service = lookup_kind(kind)
        if service is not None:
            return service
    raise BridgeUnavailable(_why_none())


def _by_name(name: str) -> Service:
    service = whereis(name)
    if service is not None:
        return service
    everything = registered()
    if name in everything:
        raise BridgeUnavailable(f"{everything[name].kind} {name!r} is registered but closed")
    others = f" (registered: {', '.join(map(repr, everything))})" if everything else ""
    raise BridgeUnavailable(f"nothing is registered as {name!r}{others}")


def _why_none() -> str:
    everything = registered()
    if not everything:
        return (
            "nothing is registered; give open_pool() or open_bridge() a name= so "
            "that it registers itself"
        )
    # Every entry is either closed or of a kind detection does not pick.
    return "; ".join(
        f"{service.kind} {name!r} is registered but "
        + ("closed" if service.closed else "is neither a pool nor a bridge")
        for name, service in everything.items()
    )
