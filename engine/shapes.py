"""Public alias: ``engine.shapes`` is :mod:`engine.client.shapes` (design section 11)."""

from engine.client.shapes import *  # noqa: F403
from engine.client.shapes import __all__ as __all__
