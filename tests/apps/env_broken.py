"""A worker app that fails at import while ENGINE_TEST_APP_BROKEN=1.

The pool copies the parent's environment at every spawn, so a test can "fix the
app" by clearing the variable while the pool keeps running.
"""

import os

from engine.workers.app import App

if os.environ.get("ENGINE_TEST_APP_BROKEN") == "1":
    raise RuntimeError("app is broken: ENGINE_TEST_APP_BROKEN=1")

app = App("env_broken")


@app.command("hello")
def hello(args: object, ctx: object) -> str:
    return "fixed"
