"""Thread settings that never oversubscribe the cores (2 threads with one core busy ran ~6x slower)."""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None, jobs: int = 1) -> int:
    """Set torch intra-op threads to ``n`` or to cores // jobs (at least 1); returns the number set."""
    import torch

    if n is None or n <= 0:
        n = max(1, available_cores() // max(1, jobs))
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return n
