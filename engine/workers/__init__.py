"""The child end of the pipe: runtime, App, the default app. Standard library only.

``current_session()`` and ``current_context()`` are for functions that
``run_sync`` runs in a worker (see :mod:`engine.workers.app`).
"""

from engine.workers.app import current_context, current_session

__all__ = ["current_context", "current_session"]
