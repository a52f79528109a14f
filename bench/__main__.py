"""``python -m bench``: run the whole benchmark suite and print the table."""

from __future__ import annotations

import sys

from bench.run import main

# Guarded: process-pool peers (anyio, multiprocessing) re-run the main module
# in their children under another name.
if __name__ == "__main__":
    sys.exit(main())
