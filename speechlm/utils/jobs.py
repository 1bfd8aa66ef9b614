"""Child processes of a parallel stage (tokenize shards, agent-run shards): they die with the run
that spawned them, so no orphan keeps writing beside a re-run."""
from __future__ import annotations

import os
from typing import Callable


def die_with_parent(parent: int) -> Callable[[], None]:
    """``preexec_fn`` of a child job: ask the kernel for SIGTERM when ``parent`` dies (Linux prctl);
    exit at once if it died before the signal was armed."""
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def preexec() -> None:
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec
