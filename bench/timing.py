"""The one timing helper of the bench scripts (stdlib only, so the peer's env can use it too)."""
from __future__ import annotations

import statistics
import time


def median_time(fn, n: int, warmup: int = 1) -> float:
    """Median wall time of ``n`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)
