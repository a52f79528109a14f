"""The app of run_sync's default pool: no commands of its own (it serves
``engine.run_sync`` and the built-ins), so a worker starts as fast as the runtime."""

from engine.workers.app import App

app = App("run_sync")
