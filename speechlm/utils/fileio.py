"""Atomic writes and completion markers: a killed stage never leaves a half-written output."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` alone must set it to read it,
    which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600 whatever the umask: give it the mode a plain open() would
    # (or, when replacing a file, that file's own mode) so outputs stay readable as before.
    try:
        mode_bits = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode_bits = 0o666 & ~current_umask()
    os.fchmod(fd, mode_bits)
    os.close(fd)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def done_marker(path: str | os.PathLike) -> Path:
    """The completion marker that sits beside an output (``out`` -> ``out.done``)."""
    path = Path(path)
    return path.with_name(path.name + ".done")


def is_done(path: str | os.PathLike) -> bool:
    return done_marker(path).exists() and Path(path).exists()


def mark_done(path: str | os.PathLike, info: dict | None = None) -> None:
    write_json(done_marker(path), info or {})


def iter_jsonl(path: str | os.PathLike, hint: str = "") -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for each non-empty line of a JSONL file; ``where`` is ``path:line`` for
    the caller's own errors. Invalid JSON is a ValueError naming the line (plus ``hint``)."""
    import json

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None
            yield where, rec
