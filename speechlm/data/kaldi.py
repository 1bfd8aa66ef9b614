"""Kaldi data dirs: read, write, validate and fix ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``,
``segments`` and ``utt2num_samples``.

Every file is ``<id> <value>`` per line, sorted by id in byte order (``LC_ALL=C sort``).
Validation reports every problem with file and line so one run shows everything to fix.

A recipe's ``local/`` script writes its data dirs with :func:`write_data_dir`::

    from speechlm.data.kaldi import Utt, write_data_dir
    write_data_dir("data/train", [Utt("spk1-0001", "/abs/a.wav", "hello there", "spk1")])
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from speechlm.utils.fileio import atomic_open

log = logging.getLogger(__name__)

# File name -> whether an empty value is allowed (never), and whether the file is keyed by utt.
UTT_FILES = ("wav.scp", "text", "utt2spk", "utt2num_samples", "segments")
KNOWN_FILES = (*UTT_FILES, "spk2utt")


@dataclass
class Problem:
    """One problem found in a data dir."""

    file: str
    line: int | None
    id: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        who = f" [{self.id}]" if self.id else ""
        return f"{where}{who}: {self.message}"


@dataclass
class Entry:
    id: str
    value: str
    line: int


def read_entries(path: str | os.PathLike, problems: list[Problem] | None = None) -> list[Entry]:
    """Read ``id value`` lines, recording malformed lines in ``problems`` (raises if None)."""
    path = Path(path)
    entries: list[Entry] = []

    def report(line: int, uid: str | None, msg: str) -> None:
        p = Problem(str(path), line, uid, msg)
        if problems is None:
            raise ValueError(str(p))
        problems.append(p)

    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                report(n, None, f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8")
                continue
            if not line.strip():
                report(n, None, "empty line")
                continue
            parts = line.strip().split(maxsplit=1)
            uid = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if not value:
                what = "empty transcript" if path.name == "text" else "no value after the id"
                report(n, uid, what)
                continue
            entries.append(Entry(uid, value, n))
    return entries


def read_file(path: str | os.PathLike) -> dict[str, str]:
    """``id -> value`` of a well-formed file (raises on the first malformed line or duplicate)."""
    out: dict[str, str] = {}
    for e in read_entries(path):
        if e.id in out:
            raise ValueError(f"{path}:{e.line}: duplicate id {e.id!r}")
        out[e.id] = e.value
    return out


def format_file(mapping: dict[str, str]) -> str:
    """The text of a data-dir file: ``id value`` lines sorted by id."""
    return "".join(f"{k} {mapping[k]}\n" for k in sorted(mapping, key=_sort_key))


def write_file(path: str | os.PathLike, mapping: dict[str, str]) -> None:
    """Write ``id value`` lines sorted by id, atomically."""
    with atomic_open(path) as f:
        f.write(format_file(mapping))


def _sort_key(s: str) -> bytes:
    return s.encode("utf-8")


def spk2utt_from_utt2spk(utt2spk: dict[str, str]) -> dict[str, str]:
    spk: dict[str, list[str]] = {}
    for u in sorted(utt2spk, key=_sort_key):
        spk.setdefault(utt2spk[u], []).append(u)
    return {s: " ".join(us) for s, us in spk.items()}


@dataclass
class DataDir:
    """An in-memory data dir (only the files that exist)."""

    path: Path
    files: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: str | os.PathLike, extra: tuple[str, ...] = ()) -> "DataDir":
        """Load the known files plus ``extra`` ones (e.g. ``text.2``) that exist in ``path``."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"data dir not found: {path}")
        names = dict.fromkeys([*KNOWN_FILES, *extra])
        return cls(path, {n: read_file(path / n) for n in names if (path / n).is_file()})

    @property
    def utt_ids(self) -> list[str]:
        key = "segments" if "segments" in self.files else "wav.scp" if "wav.scp" in self.files else "text"
        return sorted(self.files.get(key, {}), key=_sort_key)

    def audio_value(self, utt: str):
        """The ``wav.scp``-style value of ``utt`` (a dict with start/end when ``segments`` exists)."""
        if "segments" in self.files:
            rec, start, end = self.files["segments"][utt].split()
            return {"path": self.files["wav.scp"][rec], "start": float(start), "end": float(end)}
        return self.files["wav.scp"][utt]

    def save(self, path: str | os.PathLike | None = None) -> None:
        out = Path(path or self.path)
        out.mkdir(parents=True, exist_ok=True)
        for name, mapping in self.files.items():
            write_file(out / name, mapping)


@dataclass
class Utt:
    """One utterance of a data dir to write."""

    utt: str  # utterance id, no whitespace
    wav: str  # path, or a command line ending in "|"
    text: str  # transcript, one line
    spk: str  # speaker id, no whitespace
    num_samples: int | None = None


def _check_utts(utts: list[Utt], where: str) -> None:
    """Raise ValueError naming the first bad utterance (ids with spaces, duplicates, empty text)."""
    seen: set[str] = set()
    for u in utts:
        for name, value in (("utterance id", u.utt), ("speaker id", u.spk)):
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"{where}: {name} {value!r} is empty or contains whitespace")
        if u.utt in seen:
            raise ValueError(f"{where}: utterance id {u.utt} appears twice")
        seen.add(u.utt)
        if not u.text.strip() or "\n" in u.text:
            raise ValueError(f"{where}: utterance {u.utt} has an empty or multi-line transcript")
        if not u.wav or "\n" in u.wav:
            raise ValueError(f"{where}: utterance {u.utt} has no audio path")


def write_data_dir(out_dir: str | os.PathLike, utts: list[Utt]) -> Path:
    """Write ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt`` and, when every utterance has
    ``num_samples``, ``utt2num_samples``: sorted, consistent, each file atomically. Returns the
    dir; raises ValueError on bad entries."""
    out = Path(out_dir)
    _check_utts(utts, str(out))
    if not utts:
        raise ValueError(f"{out}: no utterances to write")
    utt2spk = {u.utt: u.spk for u in utts}
    files = {"wav.scp": {u.utt: u.wav for u in utts}, "text": {u.utt: u.text.strip() for u in utts},
             "utt2spk": utt2spk, "spk2utt": spk2utt_from_utt2spk(utt2spk)}
    if all(u.num_samples is not None for u in utts):
        files["utt2num_samples"] = {u.utt: str(u.num_samples) for u in utts}
    else:
        (out / "utt2num_samples").unlink(missing_ok=True)  # a stale one from an earlier run would not match
    DataDir(out, files).save()
    log.info("wrote %s: %d utterances, %d speakers", out, len(utts), len(files["spk2utt"]))
    return out


def validate(path: str | os.PathLike, check_audio: bool = True) -> list[Problem]:
    """Every problem in the data dir at ``path`` (empty list = valid)."""
    from speechlm.data.validate import validate_dir

    return validate_dir(Path(path), check_audio)
