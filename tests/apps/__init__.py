"""Worker apps used by the layer-3 tests (imported inside worker subprocesses)."""
