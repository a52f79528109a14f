"""Service discovery (design section 10): a per-process registry of pools and bridges.

``register(name, service)`` is a context manager bound to the service's
lifetime; ``whereis(name)`` is the direct lookup and ``lookup_kind(kind)`` the
fallback; ``detect_service()`` prefers a live pool, then a live bridge, and
otherwise raises :class:`~engine.errors.BridgeUnavailable` saying why. A
registered service that has closed counts as absent everywhere.
"""

from __future__ import annotations

from engine.discovery._detect import PREFERENCE, detect_service
from engine.discovery._registry import lookup_kind, register, registered, whereis
from engine.discovery._service import Service

__all__ = [
    "PREFERENCE",
    "Service",
    "detect_service",
    "lookup_kind",
    "register",
    "registered",
    "whereis",
]
