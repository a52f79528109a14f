"""Public test kit (design section 12).

* :mod:`~engine.testing.fakes`: :class:`FakeWorker` / :class:`FakeWorkerFactory`,
  scripted workers speaking the real framing over memory streams
  (``open_pool(worker_factory=FakeWorkerFactory(Script(...)))``).
* :mod:`~engine.testing.faults`: :func:`inject_fault`, kills at named points of
  the hand-off.
* :mod:`~engine.testing.strategies`: Hypothesis strategies for worker answers.
* :mod:`~engine.testing.fixtures`: :func:`start_test_pool`,
  :func:`wait_for_pool_ready`.
* :mod:`~engine.testing.driver`: :class:`TrioDriver`, one Trio run in guest mode
  pumped by the synchronous rules of a ``RuleBasedStateMachine``.
* :mod:`~engine.testing.machine`: :class:`PoolMachine` / :func:`pool_machine`,
  the pool state machine (fake or real workers).
* :mod:`~engine.testing.campaign`: :func:`run_campaign`, ``engine campaign``.
* :mod:`~engine.testing.profiles`: Hypothesis profiles ``dev``, ``ci``,
  ``campaign`` (:func:`load_profile`, :func:`scaled`).
* :mod:`~engine.testing.sshd`: :func:`loopback_sshd`, a throwaway sshd on
  127.0.0.1 to test workers started through ssh (``engine.Launcher.ssh``).

The kit sees a pool only through its documented introspection API
(``pool.inspect()``, ``pool.wait_until()``, ``pool.check_invariants()``,
``pool.worker_pids()``: see :mod:`engine.pool.pool`), never its internals.

Names are resolved on first use so that ``import engine.testing`` pulls in
neither Hypothesis nor Trio for users who need only part of the kit.

Hypothesis comes with the ``testing`` extra (``pip install 'engine[testing]'``),
not with the core install. Without it, the fakes, faults, fixtures and the
driver work; importing a part that needs it (:data:`NEEDS_HYPOTHESIS`) raises a
``ModuleNotFoundError`` that names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.testing import campaign as campaign
    from engine.testing import driver as driver
    from engine.testing import fakes as fakes
    from engine.testing import faults as faults
    from engine.testing import fixtures as fixtures
    from engine.testing import machine as machine
    from engine.testing import profiles as profiles
    from engine.testing import sshd as sshd
    from engine.testing import strategies as strategies
    from engine.testing.campaign import CampaignResult as CampaignResult
    from engine.testing.campaign import run_campaign as run_campaign
    from engine.testing.driver import TaskHandle as TaskHandle
    from engine.testing.driver import TrioDriver as TrioDriver
    from engine.testing.fakes import FakeWorker as FakeWorker
    from engine.testing.fakes import FakeWorkerFactory as FakeWorkerFactory
    from engine.testing.fakes import Script as Script
    from engine.testing.faults import FaultRecord as FaultRecord
    from engine.testing.faults import inject_fault as inject_fault
    from engine.testing.fixtures import start_test_pool as start_test_pool
    from engine.testing.fixtures import wait_for_pool_ready as wait_for_pool_ready
    from engine.testing.machine import PoolMachine as PoolMachine
    from engine.testing.machine import pool_machine as pool_machine
    from engine.testing.profiles import load_profile as load_profile
    from engine.testing.profiles import scaled as scaled
    from engine.testing.sshd import loopback_sshd as loopback_sshd

_SUBMODULES = {"campaign", "driver", "fakes", "faults", "fixtures", "machine", "profiles",
               "sshd", "strategies"}

_NAMES = {
    "CampaignResult": "campaign", "run_campaign": "campaign",
    "TaskHandle": "driver", "TrioDriver": "driver",
    "FakeWorker": "fakes", "FakeWorkerFactory": "fakes", "Script": "fakes",
    "FaultRecord": "faults", "inject_fault": "faults",
    "start_test_pool": "fixtures", "wait_for_pool_ready": "fixtures",
    "PoolMachine": "machine", "pool_machine": "machine",
    "load_profile": "profiles", "scaled": "profiles",
    "loopback_sshd": "sshd",
}

__all__ = sorted([*_SUBMODULES, *_NAMES])

# The submodules that import Hypothesis (directly or through one another);
# tests/test_extras.py checks this list against their imports.
NEEDS_HYPOTHESIS = frozenset({"campaign", "machine", "profiles", "strategies"})


class _NeedsHypothesis:
    """Import hook, installed only when Hypothesis is missing: ``import engine.testing.machine``
    then fails with the extra to install instead of "No module named 'hypothesis'"."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in NEEDS_HYPOTHESIS \
                and importlib.util.find_spec("hypothesis") is None:
            raise ModuleNotFoundError(
                f"{fullname} needs Hypothesis, which is not installed: "
                "pip install 'engine[testing]'", name="hypothesis")


if importlib.util.find_spec("hypothesis") is None:
    sys.meta_path.insert(0, _NeedsHypothesis())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"engine.testing.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"engine.testing.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'engine.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
