"""A worker app whose import takes ``SLOW_START_SECONDS`` (default 30) seconds.

It announces itself on stderr first, so a start timeout has a stderr tail to show.
"""

import os
import sys
import time

from engine.workers.programs import app

print("slow_start: sleeping before the hello", file=sys.stderr, flush=True)
time.sleep(float(os.environ.get("SLOW_START_SECONDS", "30")))

__all__ = ["app"]
