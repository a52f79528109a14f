"""engine: a supervised pool of long-lived Python worker subprocesses for Trio.

Public names are resolved lazily (PEP 562) so that ``import engine`` stays cheap:
the worker-side runtime lives inside this package and must start without
importing Trio or attrs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)

if TYPE_CHECKING:
    from typing import Any

    from engine import errors as errors
    from engine.errors import *  # noqa: F403
    from engine.pool.bridge import Bridge as Bridge
    from engine.pool.bridge import open_bridge as open_bridge
    from engine.pool.config import PoolConfig as PoolConfig
    from engine.pool.contract import Ok as Ok
    from engine.pool.contract import Remove as Remove
    from engine.pool.contract import Skip as Skip
    from engine.pool.default import configure_default_pool as configure_default_pool
    from engine.pool.default import current_default_pool as current_default_pool
    from engine.pool.default import run_sync as run_sync
    from engine.pool.introspection import PoolStatistics as PoolStatistics
    from engine.pool.lease import Lease as Lease
    from engine.pool.lease import LeaseReleased as LeaseReleased
    from engine.pool.pool import Pool as Pool
    from engine.pool.pool import open_pool as open_pool
    from engine.pool.resilience import CircuitBreaker as CircuitBreaker
    from engine.pool.resilience import Retry as Retry
    from engine.process.launch import Launcher as Launcher

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "open_pool": "engine.pool.pool",
    "Pool": "engine.pool.pool",
    "Lease": "engine.pool.lease",
    "PoolStatistics": "engine.pool.introspection",
    "PoolConfig": "engine.pool.config",
    "Ok": "engine.pool.contract",
    "Remove": "engine.pool.contract",
    "Skip": "engine.pool.contract",
    "DefaultPolicy": "engine.pool.contract",
    "open_bridge": "engine.pool.bridge",
    "Bridge": "engine.pool.bridge",
    "Retry": "engine.pool.resilience",
    "CircuitBreaker": "engine.pool.resilience",
    "Launcher": "engine.process.launch",
    "run_sync": "engine.pool.default",
    "configure_default_pool": "engine.pool.default",
    "current_default_pool": "engine.pool.default",
}

_ERRORS = {
    "EngineError", "PoolClosed", "PoolTimeout", "PoolSaturated", "PoolUnavailable",
    "WorkerError", "WorkerCrashed", "WorkerStartError", "AppStartFailed", "CallTimeout",
    "ProtocolError",
    "WorkerBusy", "SessionLost", "LeaseReleased", "RemoteError", "ContractViolation",
    "BridgeUnavailable", "ResponseShapeError", "RetriesExhausted", "ArgumentError",
    "ArgumentTypeError", "ArgumentValueError", "RequestTooLarge", "RemoteTraceback",
    "PickleNotAllowed",
}

_SUBMODULES = {"errors", "protocol", "shapes", "client", "discovery", "telemetry", "process",
               "resilience", "testing", "workers", "pool", "stress"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        # Kept: the next ``engine.run_sync`` is a plain attribute, not this call.
        globals()[name] = value
        return value
    if name in _ERRORS:
        return getattr(importlib.import_module("engine.errors"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"engine.{name}")
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_LAZY, *_ERRORS, *_SUBMODULES, "__version__"])
