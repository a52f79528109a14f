"""The default app plus ``block``: a worker that is verifiably busy.

``block`` writes ``blocking in PID`` to stderr from inside the handler (the
acknowledgement a test waits for: the worker is past reading its request),
then sleeps ``seconds`` (default an hour) and answers.
"""

import os
import sys
import time
from typing import Any

from engine.workers.app import Context
from engine.workers.programs import app


@app.command("block")
def block(args: Any, ctx: Context) -> str:
    seconds = float((args or {}).get("seconds", 3600))
    print(f"blocking in {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(seconds)
    return "unblocked"


__all__ = ["app"]
