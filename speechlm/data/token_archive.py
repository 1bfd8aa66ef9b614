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
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def read_two_columns(path: str | os.PathLike, expected: str = "utt value",
                     valid: Callable[[str], bool] | None = None) -> tuple[np.ndarray, list[str]]:
    """``key value`` lines (blank lines skipped) -> (keys as a bytes array, values as a list);
    a line that is not two columns, or whose value ``valid`` refuses, is an error naming it."""
    keys, values = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or (valid is not None and not valid(parts[1].strip())):
                raise ValueError(f"{path}:{n}: expected '{expected}', got {line.strip()!r}")
            keys.append(parts[0])
            values.append(parts[1].strip())
    return np.array(keys, dtype=np.bytes_), values


def align(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in ``keys``, -1 where missing (vectorized, no dicts)."""
    if len(keys) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], ids), len(keys) - 1)
    return np.where(keys[order][pos] == ids, order[pos], -1)


def read_lengths(path: str | os.PathLike, ids: np.ndarray | None = None) -> dict[str, int] | np.ndarray:
    """A ``.lengths`` file (``utt frames`` lines; errors name the file and line): a dict, or with
    ``ids`` (a bytes array) the frames of each id, -1 where missing."""
    keys, values = read_two_columns(path, "utt frames", str.isdigit)
    lens = np.array([int(v) for v in values], dtype=np.int64)
    if ids is None:
        return dict(zip((k.decode() for k in keys), lens.tolist()))
    pos = align(ids, keys)
    return np.where(pos >= 0, lens[np.maximum(pos, 0)], -1)


class ArchiveIndex:
    """The one reader of a token ``.scp``: where each utterance lives (ark file number + byte
    offset, numpy arrays, no per-utterance objects) and :meth:`load` to read it.

    With ``ids`` (a bytes array) row ``j`` is ``ids[j]`` and ``present`` says whether the ``.scp``
    has it; without, the rows are the ``.scp``'s own entries. Ark paths are absolute when written;
    an ark no longer at its path (a moved dump dir) is looked up beside the ``.scp``.
    """

    def __init__(self, scp: str | os.PathLike, ids: np.ndarray | None = None) -> None:
        self.scp = Path(scp)
        if not self.scp.is_file():
            raise FileNotFoundError(f"token archive index not found: {self.scp} (run `speechlm tokenize`)")
        keys, locs = read_two_columns(self.scp)
        files: dict[str, int] = {}
        file_no = np.empty(len(keys), dtype=np.int32)
        offset = np.empty(len(keys), dtype=np.int64)
        for j, loc in enumerate(locs):
            path, sep, off = loc.rpartition(":")
            if not sep or not off.isdigit():
                raise ValueError(f"{self.scp}: entry {keys[j].decode()!r} is {loc!r}, expected 'file.ark:offset'")
            file_no[j] = files.setdefault(path, len(files))
            offset[j] = int(off)
        if ids is None:
            self.ids, self.present = keys, np.ones(len(keys), dtype=bool)
        else:
            pos = align(ids, keys)
            self.ids, self.present = ids, pos >= 0
            file_no = np.where(self.present, file_no[np.maximum(pos, 0)], -1).astype(np.int32)
            offset = np.where(self.present, offset[np.maximum(pos, 0)], -1)
        self.file_no, self.offset = file_no, offset
        self.files = [p if os.path.exists(p) else str(self.scp.parent / Path(p).name) for p in files]
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def load(self, row: int) -> np.ndarray:
        """The int32 ``[frames, streams]`` array of row ``row``."""
        if self._pid != os.getpid():  # forked (DataLoader worker): a shared file offset would race
            self._handles, self._pid = {}, os.getpid()
        k = int(self.file_no[row])
        fh = self._handles.get(k)
        if fh is None:
            fh = self._handles[k] = open(self.files[k], "rb")
        fh.seek(int(self.offset[row]))
        return read_kaldi(fh)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: handles reopen lazily
        return {**self.__dict__, "_handles": {}}


class TokenReader(Mapping):
    """Lazy ``utt -> int32 [frames, streams]`` over a token ``.scp`` (an :class:`ArchiveIndex`)."""

    def __init__(self, scp: str | os.PathLike) -> None:
        self.index = ArchiveIndex(scp)
        self._rows = {u.decode(): j for j, u in enumerate(self.index.ids)}

    def __getitem__(self, utt: str) -> np.ndarray:
        return self.index.load(self._rows[utt])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        self.index.close()
