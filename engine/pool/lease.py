"""LeaseReleased lives apart from :mod:`engine.errors` because it must subclass
``trio.ClosedResourceError`` and ``engine.errors`` must stay importable without Trio
(the worker-side runtime imports it through :mod:`engine.protocol`)."""

from __future__ import annotations

import trio

from engine.errors import EngineError


class LeaseReleased(EngineError, trio.ClosedResourceError):
    """A lease was used after it was checked back in (or its worker was replaced)."""

    def __init__(self, *, worker_id: str | None = None) -> None:
        self.worker_id = worker_id
        super().__init__(
            f"lease on worker {worker_id} was already released; check out a new lease "
            "with pool.checkout()"
        )
