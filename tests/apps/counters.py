"""A user's worker app whose commands declare their argument shapes.

``incr`` adds ``n`` to the session's counter; ``sumsq`` sums the squares of a
list of numbers. Both refuse arguments of any other shape (as real handlers
do), so only a campaign that sends the declared shape exercises them.
"""

from engine.workers.app import App

app = App("counters")

INCR = {"type": "object", "properties": {"n": {"type": "integer", "minimum": -100,
                                               "maximum": 100}},
        "required": ["n"]}
SUMSQ = {"type": "object",
         "properties": {"xs": {"type": "array", "items": {"type": "number", "minimum": -1e6,
                                                          "maximum": 1e6},
                               "maxItems": 20}},
         "required": ["xs"]}


def _object(args, command):
    if not isinstance(args, dict):
        raise TypeError(f"{command}: args must be an object, got {type(args).__name__}")
    return args


@app.command("incr", args=INCR)
def incr(args, ctx):
    n = _object(args, "incr")["n"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"incr: n must be an integer, got {n!r}")
    ctx.state["total"] = ctx.state.get("total", 0) + n
    return ctx.state["total"]


@app.command("sumsq", args=SUMSQ)
def sumsq(args, ctx):
    xs = _object(args, "sumsq")["xs"]
    return sum(x * x for x in xs)


@app.command("echo")
def echo(args, ctx):
    return args
