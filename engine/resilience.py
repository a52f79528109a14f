"""Public alias: ``engine.resilience`` is :mod:`engine.pool.resilience` (design section 9)."""

from engine.pool.resilience import *  # noqa: F403
from engine.pool.resilience import __all__ as __all__
