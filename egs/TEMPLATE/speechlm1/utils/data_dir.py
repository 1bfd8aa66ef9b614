"""Write Kaldi data dirs from a recipe's ``local/`` preparation scripts (standard library only).

A recipe script builds a list of :class:`Utt` and calls :func:`write_data_dir`; the files come out
sorted by utterance id (``LC_ALL=C`` order) and consistent with each other::

    import sys; from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent / "utils"))  # the recipe's utils/ link
    from data_dir import Utt, write_data_dir
    write_data_dir("data/train", [Utt("spk1-0001", "/abs/a.wav", "hello there", "spk1")])

Writes ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt`` and, when every utterance has
``num_samples``, ``utt2num_samples``. Each file is written to a temporary name and renamed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Utt:
    utt: str  # utterance id, no whitespace
    wav: str  # path, or a command line ending in "|"
    text: str  # transcript, one line
    spk: str  # speaker id, no whitespace
    num_samples: int | None = None


def check_utts(utts: list[Utt], where: str) -> None:
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


def _write(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_data_dir(out_dir: str | os.PathLike, utts: list[Utt]) -> Path:
    """Write a sorted Kaldi data dir; returns its path. Raises ValueError on bad entries."""
    out = Path(out_dir)
    utts = sorted(utts, key=lambda u: u.utt.encode("utf-8"))  # byte order, like LC_ALL=C sort
    check_utts(utts, str(out))
    if not utts:
        raise ValueError(f"{out}: no utterances to write")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "wav.scp", [f"{u.utt} {u.wav}" for u in utts])
    _write(out / "text", [f"{u.utt} {u.text.strip()}" for u in utts])
    _write(out / "utt2spk", [f"{u.utt} {u.spk}" for u in utts])
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(u.spk, []).append(u.utt)
    _write(out / "spk2utt", [f"{s} {' '.join(v)}" for s, v in sorted(spk2utt.items(), key=lambda x: x[0].encode())])
    if all(u.num_samples is not None for u in utts):
        _write(out / "utt2num_samples", [f"{u.utt} {u.num_samples}" for u in utts])
    elif (out / "utt2num_samples").exists():
        (out / "utt2num_samples").unlink()  # a stale one from an earlier run would not match
    print(f"wrote {out}: {len(utts)} utterances, {len(spk2utt)} speakers", file=sys.stderr)
    return out
