"""Benchmarks against peers (design section 13): ``python -m bench``."""
