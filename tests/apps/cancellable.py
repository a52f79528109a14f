"""A worker app for cooperative cancellation tests (tests/pool/test_cancellation.py).

``remember``/``recall`` keep a value in the session's state; ``block`` tells
the test it started (a line on the FIFO named by ``marker``: a protocol
acknowledgement, no sleeps in the test) and then sleeps, cooperatively
(``RequestAbandoned`` ends it, and its ``finally`` keeps the session's state
consistent), or, with ``"stubborn": true``, catching every exception in a loop
until it is killed (a handler that blocks the interrupt).
"""

import time

from engine.workers.app import App

app = App("cancellable")


@app.command("remember")
def remember(args, ctx):
    ctx.state["value"] = args
    return args


@app.command("recall")
def recall(args, ctx):
    return ctx.state.get("value")


def _announce(args, ctx):
    with open(args["marker"], "w") as marker:
        marker.write(f"started {args.get('tag', ctx.request_id)}\n")


@app.command("block")
def block(args, ctx):
    state = ctx.state
    if args.get("stubborn"):
        announced = False
        while True:  # only a kill ends this
            try:
                if not announced:  # inside the try: an interrupt can come at once
                    announced = True
                    _announce(args, ctx)
                time.sleep(60)
            except BaseException:
                pass
    state["blocking"] = True
    try:
        _announce(args, ctx)
        time.sleep(args.get("seconds", 60))
    finally:
        state["blocking"] = False  # interrupted or not, the state stays consistent
    return {"slept": True}
