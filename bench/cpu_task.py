"""The CPU-bound function of the run_sync bench's batch rows (importable by
every contender's workers; standard library only, so it costs them nothing)."""


def spin(n: int) -> int:
    """About ``n`` loop iterations of integer work, no allocation to speak of."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
