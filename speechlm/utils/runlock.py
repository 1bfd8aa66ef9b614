"""A lock file that says who holds it: one stage run per output dir.

The file holds the owner's pid, host, start time and command (JSON); the lock itself is a kernel
``flock`` on it, so it is released when its holder dies, however it dies. A lock file whose pid
is dead (a killed run) is therefore taken over without anyone deleting it, and two runs that
both find it stale cannot both win. The file is emptied, not removed, on release (removing a
flock'ed file lets a third run lock a new file while a second still holds the old one).

Exclusive holders (a whole run) write their pid; shared holders (the ``--shard`` jobs of one
run, started by ``run.pl``/``slurm.pl``) only keep exclusive runs out.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class LockedError(ValueError):
    """Another live run holds the lock (a ValueError: the CLI reports it in one line, exit 1)."""

    def __init__(self, message: str, owner: dict | None) -> None:
        super().__init__(message)
        self.owner = owner


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_owner(path: str | os.PathLike) -> dict | None:
    """The owner record of a lock file (None when empty, unreadable or missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        owner = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def describe(owner: dict | None) -> str:
    if not owner:
        return "an unknown process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} (started {started}: {owner.get('cmd', '?')})"


class RunLock:
    """``with RunLock(path, what="tokenize"):`` -- raises :class:`LockedError` if a live run holds it.

    Args:
        path: the lock file (created with its parent dir).
        what: the stage, for messages.
        shared: take a shared lock (``--shard`` jobs); exclusive otherwise.
        owner_ok: a pid that may hold the exclusive lock without this run failing (a job's own
            parent run); the lock is then not taken.
    """

    def __init__(self, path: str | os.PathLike, what: str, shared: bool = False, owner_ok: int | None = None) -> None:
        self.path, self.what, self.shared, self.owner_ok = Path(path), what, shared, owner_ok
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_owner(self.path)
            if owner and self.owner_ok is not None and owner.get("pid") == self.owner_ok:
                return self  # our own parent run holds it for us
            if owner and owner.get("host") == platform.node() and pid_alive(int(owner.get("pid", -1))):
                who = describe(owner)
            else:
                who = f"other `speechlm {self.what} --shard` jobs"
            raise LockedError(
                f"{self.path.parent.absolute()}: another `speechlm {self.what}` is running here ({who}); wait for "
                f"it to finish (or stop it) and run again. Lock file: {self.path.absolute()}", owner) from None
        if not self.shared:
            old = read_owner(self.path)
            if old and old.get("pid") != os.getpid():
                log.warning("%s: taking over the stale lock of %s, which is no longer running", self.path, describe(old))
            record = {"pid": os.getpid(), "host": platform.node(), "started": time.time(),
                      "cmd": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if not self.shared:
            os.ftruncate(self.fd, 0)  # free: the next run finds no owner to report
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["RunLock", "LockedError", "pid_alive", "read_owner"]
