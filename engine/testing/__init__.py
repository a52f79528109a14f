"""Public test kit (design section 12): strategies, fake workers, fault injection.

Submodules are imported on first use so that ``import engine.testing`` does not
pull in Hypothesis (or Trio) for users who only need part of the kit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.testing import strategies as strategies

_SUBMODULES = {"strategies"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"engine.testing.{name}")
    raise AttributeError(f"module 'engine.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_SUBMODULES)
