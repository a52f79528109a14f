"""Hypothesis profiles for engine's property tests and campaigns.

* ``dev`` (local default): random examples, no deadline (the pool machines run
  Trio and subprocesses, whose timing varies), the example database on so a
  failure found once is replayed first next time.
* ``ci``: Hypothesis' own ``ci`` profile (derandomised, no database, blobs
  printed; Hypothesis loads it by itself when ``CI=true``) extended with our
  health-check suppressions. Registered under the same name, so whichever
  loads it gets ours.
* ``campaign``: long runs: 100 times the examples of ``dev``, database on.
* ``mutation``: for mutation testing (``tools/mutation.py``): derandomised like
  ``ci``, so a mutant's verdict is reproducible; no shrinking (a mutant is
  killed by its first failing example, and shrinking a long stateful run costs
  more than the whole test); 40% of ``ci``'s examples, which kill what the
  full budget kills at about 70% of the CPU. A smaller budget can only
  understate the score of the ``ci`` suite, never overstate it.

:func:`load_profile` picks ``$HYPOTHESIS_PROFILE``, else ``ci`` when ``CI`` is
set to a true value, else ``dev``. Tests that fix their own ``max_examples``
should go through :func:`scaled`, so that ``campaign`` multiplies them.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings

__all__ = ["PROFILES", "current_profile", "load_profile", "register_profiles", "scaled"]

PROFILES = ("dev", "ci", "campaign", "mutation")
_BASE_EXAMPLES = 100  # what a test's own max_examples is relative to
_SUPPRESS = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much)
_loaded: list[str] = []


def register_profiles() -> None:
    """Register ``dev``, ``ci``, ``campaign`` and ``mutation`` (idempotent)."""
    settings.register_profile("dev", deadline=None, max_examples=_BASE_EXAMPLES,
                              suppress_health_check=_SUPPRESS)
    try:
        builtin_ci = settings.get_profile("ci")
    except Exception:  # pragma: no cover - Hypothesis without a built-in ci profile
        builtin_ci = settings(derandomize=True, database=None, print_blob=True)
    settings.register_profile("ci", parent=builtin_ci, deadline=None,
                              max_examples=_BASE_EXAMPLES, print_blob=True, derandomize=True,
                              suppress_health_check=_SUPPRESS)
    settings.register_profile("campaign", deadline=None, max_examples=_BASE_EXAMPLES * 100,
                              print_blob=True, suppress_health_check=_SUPPRESS)
    settings.register_profile("mutation", parent=settings.get_profile("ci"),
                              max_examples=_BASE_EXAMPLES * 4 // 10, print_blob=False,
                              phases=(Phase.explicit, Phase.generate))


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def load_profile(name: str | None = None) -> str:
    """Register the profiles and load ``name`` (default: from the environment)."""
    register_profiles()
    if name is None:
        name = os.environ.get("HYPOTHESIS_PROFILE") or (
            "ci" if _truthy(os.environ.get("CI")) else "dev")
    if name not in PROFILES:
        try:
            settings.get_profile(name)
        except Exception:
            raise ValueError(f"unknown Hypothesis profile {name!r}; engine registers "
                             f"{', '.join(PROFILES)}") from None
    settings.load_profile(name)
    _loaded[:] = [name]
    return name


def current_profile() -> str | None:
    """The profile :func:`load_profile` loaded last, if any."""
    return _loaded[0] if _loaded else None


def scaled(max_examples: int, **overrides: Any) -> settings:
    """Settings for a test whose budget is ``max_examples`` under ``dev``/``ci``.

    The loaded profile's ``max_examples`` divided by 100 scales it (``campaign``:
    x100); everything else comes from the loaded profile.
    """
    current = settings.default
    factor = (current.max_examples if current is not None else _BASE_EXAMPLES) / _BASE_EXAMPLES
    return settings(max_examples=max(1, round(max_examples * factor)), deadline=None,
                     **overrides)
