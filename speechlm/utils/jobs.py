"""Child processes of a parallel stage (tokenize shards, agent-run shards): they die with the run
that spawned them, so no orphan keeps writing beside a re-run."""
from __future__ import annotations

import os
from pathlib import Path
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


def run_jobs(jobs: list[tuple[int, list[str], Path]], env: dict[str, str], what: str, n: int,
             poll: Callable[[], None] | None = None) -> None:
    """Run ``(number, command, log file)`` jobs at once as child processes that die with this one;
    ``poll`` is called twice a second while they run (a progress bar). Stopping this process stops
    them. A failed job raises ValueError naming it (``what number/n``), its log and the log's end:
    the CLI reports a ValueError in one line, and the cause is almost always the configuration."""
    import subprocess
    import time

    procs = []
    try:
        for number, cmd, log_path in jobs:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = open(log_path, "w", encoding="utf-8")
            procs.append((number, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                                   preexec_fn=die_with_parent(os.getpid())), logf, log_path))
        while any(p.poll() is None for _, p, _, _ in procs):
            time.sleep(0.5)
            if poll is not None:
                poll()
    except BaseException:
        for _, p, _, _ in procs:
            p.terminate()
        raise
    finally:
        for _, _, f, _ in procs:
            f.close()
    for number, p, _, log_path in procs:
        if p.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ValueError(f"{what} {number}/{n} failed (exit {p.returncode}); see {log_path}:\n" + "\n".join(tail))
