"""PoolMachine, made of its rule groups, and :func:`pool_machine`, which configures it.

The composition only: each group of rules is a mixin over
:class:`~engine.testing.machine.base.MachineBase`, in its own module. Hypothesis
collects the rules by name over the whole class, so the split changes neither
their set nor their order.
"""

from __future__ import annotations

import collections
from typing import Any, Literal

from engine.pool.config import make_config
from engine.testing.machine.cancellation import CancellationRules
from engine.testing.machine.checkouts import CheckoutRules
from engine.testing.machine.closing import CloseRules
from engine.testing.machine.deaths import DeathRules
from engine.testing.machine.fake_workers import FakeWorkerRules
from engine.testing.machine.handoff import HandoffFaultRules
from engine.testing.machine.invariants import Invariants
from engine.testing.machine.sessions import SessionRules

DEFAULT_APP = "engine.workers.programs"


class PoolMachine(CheckoutRules, CancellationRules, DeathRules, HandoffFaultRules,
                  FakeWorkerRules, SessionRules, CloseRules, Invariants):
    """The pool state machine; configure it with :func:`pool_machine`."""

    totals = collections.Counter()
    app_calls = collections.Counter()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Each machine class counts its own examples and calls (pool_machine()'s
        # classes and subclasses of yours alike): none adds to its base's
        # figures or shares them with its siblings.
        cls.totals = collections.Counter()
        cls.app_calls = collections.Counter()


def pool_machine(*, workers: Literal["fake", "real"] = "fake",
                 app: str = DEFAULT_APP, sizes: tuple[int, ...] | None = None,
                 commands: frozenset[str] | None = None, name: str | None = None,
                 call_declared: bool | None = None, **config: Any) -> type[PoolMachine]:
    """A :class:`PoolMachine` subclass for fake or real workers running ``app``.

    ``sizes``: the pool sizes examples choose from (default 1-3 for fakes, 1-2
    for real workers). ``commands``: the app commands calls may use (default:
    every command the app's hello lists that the machine knows; ``ping`` always);
    a named command the machine does not know is called with arguments of the
    shape the hello declares for it (any JSON if none), its outcomes counted
    in ``app_calls``. ``call_declared``: call every command with a declared
    shape that way too; by default on for an app of yours (so that its own
    commands are exercised, as ``engine campaign`` does) and off for the
    default app, whose commands the machine knows. Extra keywords are
    PoolConfig fields for every pool. Bad arguments raise here, not at the
    first example.
    """
    if workers not in ("fake", "real"):
        raise ValueError(f"workers must be 'fake' or 'real', got {workers!r}")
    if sizes is not None and (not sizes or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)):
        raise ValueError(f"sizes must be pool sizes (integers >= 1), got {sizes!r}")
    make_config(None, {"app": app, **config})  # the pool's own checks, now
    if call_declared is None:
        call_declared = app != DEFAULT_APP
    chosen = sizes or ((1, 2, 3) if workers == "fake" else (1, 2))
    attributes: dict[str, Any] = {
        "workers": workers, "app": app, "sizes": chosen, "extra_config": dict(config),
        "allowed_commands": None if commands is None else frozenset(commands),
        "call_declared": call_declared,
        "__doc__": f"PoolMachine over {workers} workers running {app!r}.",
    }
    if workers == "real":
        attributes.update(checkout_timeouts=(0.5, 5.0), call_timeout=2.0,
                          settle_timeout=20.0)
    return type(name or f"{workers.capitalize()}PoolMachine", (PoolMachine,), attributes)

