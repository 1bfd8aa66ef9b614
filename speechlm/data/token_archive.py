"""Token archives: kaldiio ``ark``/``scp`` of int32 ``[frames, streams]`` arrays, plus lengths files.

Arrays are stored with kaldiio's ``numpy`` write function (Kaldi's binary matrix format has no
int32 matrices), so ``kaldiio.load_scp(scp)[utt]`` returns the exact int32 array.

Writing is resumable: :class:`ShardWriter` appends each array to an ark and one line to a
journal (``utt offset end frames``, or ``utt FAILED reason``). A killed job re-opened with the
same prefix keeps every journaled entry, cuts the ark back to the last complete one, and goes on.
:func:`merge_shards` then copies the arrays of all shards, in id order, into the final ark.

Example:
    >>> w = ShardWriter("/tmp/x/speech.0")            # doctest: +SKIP
    >>> w.add("utt1", np.zeros((5, 8), np.int32))       # doctest: +SKIP
    >>> w.close()                                       # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import kaldiio
from kaldiio.matio import read_kaldi
import numpy as np

from speechlm.utils.fileio import atomic_open

log = logging.getLogger(__name__)

FAILED = "FAILED"


def _write_entry(f, utt: str, arr: np.ndarray) -> tuple[int, int]:
    """Write one ``utt array`` entry at the current position; returns (data offset, end)."""
    start = f.tell()
    kaldiio.save_ark(f, {utt: np.ascontiguousarray(arr, dtype=np.int32)}, write_function="numpy")
    return start + len(utt.encode("utf-8")) + 1, f.tell()


def check_tokens(arr: np.ndarray, utt: str) -> np.ndarray:
    """An int32 ``[frames, streams]`` array (``[n]`` becomes ``[n, 1]``); errors name ``utt``."""
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"utterance {utt}: tokens must be [frames, streams], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"utterance {utt}: tokens must be integers, got {arr.dtype}")
    return arr.astype(np.int32, copy=False)


class ShardWriter:
    """Append-only, resumable writer of one shard: ``PREFIX.ark`` + ``PREFIX.journal``."""

    def __init__(self, prefix: str | os.PathLike, readonly: bool = False) -> None:
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.ark_path = self.prefix.with_name(self.prefix.name + ".ark")
        self.journal_path = self.prefix.with_name(self.prefix.name + ".journal")
        self.entries: dict[str, tuple[int, int]] = {}  # utt -> (offset, frames)
        self.failed: dict[str, str] = {}  # utt -> reason
        self.readonly = readonly
        end = self._recover()
        if readonly:
            return
        self._ark = open(self.ark_path, "r+b" if self.ark_path.exists() else "w+b")
        self._ark.truncate(end)
        self._ark.seek(end)
        self._journal = open(self.journal_path, "a", encoding="utf-8")

    def _recover(self) -> int:
        """Read a previous journal; returns the ark length that its complete entries cover."""
        if not self.journal_path.exists():
            return 0
        text = self.journal_path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # a killed writer may leave half a line
        end = 0
        for line in complete.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1] == FAILED:
                self.failed[parts[0]] = parts[2]
            elif len(parts) == 4:
                self.entries[parts[0]] = (int(parts[1]), int(parts[3]))
                end = max(end, int(parts[2]))
        if self.ark_path.exists() and self.ark_path.stat().st_size < end:
            log.warning("%s is shorter than its journal says; starting this shard again", self.ark_path)
            self.entries.clear()
            self.failed.clear()
            complete, end = "", 0
        if self.readonly:
            return end
        with atomic_open(self.journal_path) as f:
            f.write(complete)
        if self.entries or self.failed:
            log.info("%s: resuming after %d finished entries", self.prefix, len(self.entries) + len(self.failed))
        return end

    def __contains__(self, utt: str) -> bool:
        return utt in self.entries or utt in self.failed

    def add(self, utt: str, arr: np.ndarray) -> None:
        """Append one array (flushed to disk before the journal line that makes it count)."""
        if any(c.isspace() for c in utt):
            raise ValueError(f"utterance id {utt!r} contains whitespace")
        arr = check_tokens(arr, utt)
        offset, end = _write_entry(self._ark, utt, arr)
        self._ark.flush()
        self._journal.write(f"{utt}\t{offset}\t{end}\t{arr.shape[0]}\n")
        self._journal.flush()
        self.entries[utt] = (offset, arr.shape[0])

    def add_failure(self, utt: str, reason: str) -> None:
        reason = " ".join(str(reason).split()) or "unknown error"
        self._journal.write(f"{utt}\t{FAILED}\t{reason}\n")
        self._journal.flush()
        self.failed[utt] = reason

    def close(self) -> None:
        if self.readonly:
            return
        for f in (self._ark, self._journal):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def read(self, utt: str) -> np.ndarray:
        """Read back an entry written to this shard (after :meth:`close`)."""
        return kaldiio.load_mat(f"{self.ark_path}:{self.entries[utt][0]}")


def write_archive(
    out_prefix: str | os.PathLike, items: Iterable[tuple[str, np.ndarray]]
) -> int:
    """Write ``(utt, array)`` pairs to ``OUT.ark`` / ``OUT.scp`` / ``OUT.lengths``; returns the count.

    The outputs are written under temporary names and renamed, the ``.scp`` last, so a reader
    never sees a half-written archive.
    """
    out = Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    ark, scp, lengths = (out.with_name(out.name + s) for s in (".ark", ".scp", ".lengths"))
    scp_lines, len_lines = [], []
    with atomic_open(ark, "wb") as f:
        for utt, arr in items:
            arr = check_tokens(arr, utt)
            offset, _ = _write_entry(f, utt, arr)
            scp_lines.append(f"{utt} {ark.resolve()}:{offset}\n")
            len_lines.append(f"{utt} {arr.shape[0]}\n")
    with atomic_open(lengths) as f:
        f.writelines(len_lines)
    with atomic_open(scp) as f:
        f.writelines(scp_lines)
    return len(scp_lines)


def merge_shards(
    shards: list[ShardWriter], out_prefix: str | os.PathLike, order: Iterable[str]
) -> tuple[int, dict[str, str]]:
    """Copy the shards' arrays in ``order`` into ``OUT.ark`` / ``OUT.scp`` / ``OUT.lengths``.

    Ids missing from every shard are skipped; returns (number written, {failed utt: reason}).
    """
    where = {u: s for s in shards for u in s.entries}
    failed = {u: r for s in shards for u, r in s.failed.items()}
    handles: dict[Path, object] = {}

    def arrays() -> Iterator[tuple[str, np.ndarray]]:
        for utt in order:
            shard = where.get(utt)
            if shard is None:
                continue
            fh = handles.get(shard.ark_path) or handles.setdefault(shard.ark_path, open(shard.ark_path, "rb"))
            fh.seek(shard.entries[utt][0])
            yield utt, read_kaldi(fh)

    try:
        n = write_archive(out_prefix, arrays())
    finally:
        for fh in handles.values():
            fh.close()
    return n, failed


def write_lengths(path: str | os.PathLike, lengths: Mapping[str, int]) -> None:
    with atomic_open(path) as f:
        f.writelines(f"{u} {n}\n" for u, n in lengths.items())


def read_lengths(path: str | os.PathLike) -> dict[str, int]:
    """``utt frames`` lines -> dict; errors name the file and line."""
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{i}: expected 'utt frames', got {line.rstrip()!r}")
            out[parts[0]] = int(parts[1])
    return out


class TokenReader(Mapping):
    """Lazy ``utt -> int32 [frames, streams]`` over a token ``.scp``.

    Ark paths are absolute when written; if the dump dir was moved, an ark that no longer
    exists at its recorded path is looked up beside the ``.scp``.
    """

    def __init__(self, scp: str | os.PathLike) -> None:
        self.scp = Path(scp)
        if not self.scp.is_file():
            raise FileNotFoundError(f"token archive index not found: {self.scp} (run `speechlm tokenize`)")
        self._index: dict[str, tuple[str, int]] = {}
        moved: dict[str, str] = {}
        with open(self.scp, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                parts = line.rstrip("\n").split(" ", 1)
                if len(parts) != 2 or ":" not in parts[1]:
                    raise ValueError(f"{self.scp}:{i}: expected 'utt path.ark:offset', got {line.rstrip()!r}")
                path, off = parts[1].rsplit(":", 1)
                if path not in moved:
                    moved[path] = path if Path(path).exists() else str(self.scp.parent / Path(path).name)
                self._index[parts[0]] = (moved[path], int(off))
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()

    def __getitem__(self, utt: str) -> np.ndarray:
        path, off = self._index[utt]
        if self._pid != os.getpid():  # forked (DataLoader worker): a shared file offset would race
            self._handles, self._pid = {}, os.getpid()
        fh = self._handles.get(path)
        if fh is None:
            fh = self._handles[path] = open(path, "rb")
        fh.seek(off)
        return read_kaldi(fh)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: handles reopen lazily
        return {**self.__dict__, "_handles": {}}
