"""The same commands as :mod:`tests.apps.counters`, without declared shapes:
a campaign can only send them arbitrary JSON, and they refuse almost all of it."""

from engine.workers.app import App
from tests.apps.counters import incr, sumsq

app = App("undeclared_counters")
app.add_command("incr", incr)
app.add_command("sumsq", sumsq)
