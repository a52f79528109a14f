"""The default app, except that some slots never start.

The runtime is started with ``--worker-id <label>-<slot>.<generation>``; this app
fails at import when ``<slot>`` is listed in ``FLAKY_FAIL_SLOTS`` (comma
separated, default ``0``), so a test can break one slot of a pool and keep the
others serving.
"""

import os
import sys

from engine.workers.programs import app


def _slot() -> int:
    argv = sys.argv
    worker_id = argv[argv.index("--worker-id") + 1]
    return int(worker_id.rsplit("-", 1)[1].split(".", 1)[0])


_failing = {int(s) for s in os.environ.get("FLAKY_FAIL_SLOTS", "0").split(",") if s}
if _slot() in _failing:
    print(f"flaky_start: slot {_slot()} refuses to start", file=sys.stderr, flush=True)
    raise RuntimeError(f"flaky_start: slot {_slot()} is configured to fail")

__all__ = ["app"]
