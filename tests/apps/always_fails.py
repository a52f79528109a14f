"""A worker app whose import always fails: every start is a start failure."""

import sys

print("always_fails: refusing to start", file=sys.stderr, flush=True)
raise RuntimeError("always_fails: this app never starts")
