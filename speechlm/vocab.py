"""The shared token space: one ``token_list.json`` for every task and tokenizer.

Layout (append-only: adding a task or a tokenizer never moves an existing id)::

    0 <pad>  1 <eos>  2 <unk>  3 <bos>  4 <sep>  5 <mask>  ... <reserved_63>   fixed block of 64
    then, in the order they were added:
      <task:asr>                      one token per task
      <seg:codec>                     one segment marker per tokenizer
      codec/s0/0 .. codec/s0/255      one contiguous range per tokenizer stream
      codec/s1/0 .. ...

A tokenizer may share streams with one added before it (``rows_of`` in ``tokenizers.yaml``): its
shared streams then take the other's range (the same ids, so the same embedding and output rows)
and add no tokens. A phone-led Codec 2 target shares its Codec 2 streams with the ``codec`` that ASR
reads, so that both tasks train one set of rows.

Tokens are stored local to their tokenizer (``[frames, streams]`` int arrays) and shifted into
this space with :meth:`Vocabulary.offset` when sequences are built.

Example:
    >>> v = Vocabulary()
    >>> v.add_tokenizer("codec", [256, 256]); v.add_task("asr")
    >>> v.offset("codec", 1) - v.offset("codec", 0)
    256
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from speechlm.registry import suggest

SPECIALS = ["<pad>", "<eos>", "<unk>", "<bos>", "<sep>", "<mask>", "<blank>", "<sil>"]
N_RESERVED = 64
FORMAT_VERSION = 1


class VocabularyError(ValueError):
    pass


class Vocabulary:
    """Append-only joint vocabulary with per-tokenizer stream ranges."""

    def __init__(self) -> None:
        self.tokens: list[str] = SPECIALS + [f"<reserved_{i}>" for i in range(len(SPECIALS), N_RESERVED)]
        self.tasks: dict[str, int] = {}
        self.markers: dict[str, int] = {}
        # tokenizer name -> list of (start, size) per stream
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        self._index = {t: i for i, t in enumerate(self.tokens)}

    # ---- ids of special tokens -------------------------------------------------------
    pad_id = 0
    eos_id = 1
    unk_id = 2
    bos_id = 3

    def __len__(self) -> int:
        return len(self.tokens)

    def _append(self, token: str) -> int:
        if token in self._index:
            raise VocabularyError(f"token {token!r} is already in the vocabulary")
        self.tokens.append(token)
        self._index[token] = len(self.tokens) - 1
        return len(self.tokens) - 1

    def id(self, token: str) -> int:
        return self._index[token]

    # ---- growing ---------------------------------------------------------------------
    def add_task(self, name: str) -> int:
        """Add ``<task:name>`` (no-op if present); returns its id."""
        if name not in self.tasks:
            self.tasks[name] = self._append(f"<task:{name}>")
        return self.tasks[name]

    def add_tokenizer(self, name: str, codebook_sizes: list[int],
                      shared: dict[int, tuple[str, int]] | None = None) -> None:
        """Add a segment marker and one contiguous range per stream (no-op if the same layout exists).

        ``shared`` maps a stream ``k`` of this tokenizer to ``(tokenizer, stream)`` already in the
        vocabulary, whose range (of the same size) stream ``k`` then uses instead of a new one."""
        sizes = [int(s) for s in codebook_sizes]
        shared = shared or {}
        for k, (other, j) in shared.items():
            if not 0 <= k < len(sizes):
                raise VocabularyError(f"tokenizer {name!r} has {len(sizes)} streams, it cannot share stream {k}")
            size = self._check_tok(other)[j][1] if j < self.n_streams(other) else None
            if size != sizes[k]:
                raise VocabularyError(f"tokenizer {name!r} stream {k} ({sizes[k]} ids) cannot share the rows of "
                                      f"{other!r} stream {j} ({size if size is not None else 'no such stream'})")
        if name in self.ranges:
            old = [s for _, s in self.ranges[name]]
            if old != sizes:
                raise VocabularyError(
                    f"tokenizer {name!r} is in the vocabulary with stream sizes {old}, "
                    f"cannot change them to {sizes} (ids are append-only; use a new tokenizer name)"
                )
            want = {k: self.ranges[other][j] for k, (other, j) in shared.items()}
            have = {k: r for k, r in enumerate(self.ranges[name]) if self.tokenizer_of(r[0]) != (name, k)}
            if have != want:
                raise VocabularyError(f"tokenizer {name!r} is in the vocabulary with other shared rows than "
                                      f"{shared or 'none'} (ids are append-only; use a new tokenizer name)")
            return
        self.markers[name] = self._append(f"<seg:{name}>")
        ranges = []
        for k, size in enumerate(sizes):
            if k in shared:
                other, j = shared[k]
                ranges.append(self.ranges[other][j])
                continue
            start = len(self.tokens)
            self.tokens.extend(f"{name}/s{k}/{i}" for i in range(size))
            self._index.update((f"{name}/s{k}/{i}", start + i) for i in range(size))
            ranges.append((start, size))
        self.ranges[name] = ranges

    def unique_ranges(self) -> list[tuple[str, int, int, int]]:
        """``(tokenizer, stream, start, end)`` of each range once (a shared range under its owner)."""
        out, seen = [], set()
        for name, ranges in self.ranges.items():
            for k, (start, size) in enumerate(ranges):
                if (start, size) not in seen:
                    seen.add((start, size))
                    out.append((name, k, start, start + size))
        return out

    # ---- lookups ---------------------------------------------------------------------
    def _check_tok(self, name: str) -> list[tuple[int, int]]:
        if name not in self.ranges:
            raise VocabularyError(
                f"tokenizer {name!r} is not in the vocabulary{suggest(name, self.ranges)}; "
                f"it has: {', '.join(self.ranges) or 'none'}"
            )
        return self.ranges[name]

    def task_id(self, name: str) -> int:
        if name not in self.tasks:
            raise VocabularyError(
                f"task {name!r} is not in the vocabulary{suggest(name, self.tasks)}; "
                f"it has: {', '.join(self.tasks) or 'none'} (extend it with `speechlm vocab --extend`)"
            )
        return self.tasks[name]

    def marker_id(self, tokenizer: str) -> int:
        self._check_tok(tokenizer)
        return self.markers[tokenizer]

    def offset(self, tokenizer: str, stream: int = 0) -> int:
        return self._check_tok(tokenizer)[stream][0]

    def stream_range(self, tokenizer: str, stream: int = 0) -> tuple[int, int]:
        """[start, end) of one stream of ``tokenizer`` in the shared space."""
        start, size = self._check_tok(tokenizer)[stream]
        return start, start + size

    def n_streams(self, tokenizer: str) -> int:
        return len(self._check_tok(tokenizer))

    def tokenizer_of(self, token_id: int) -> tuple[str, int] | None:
        """(tokenizer, stream) that owns ``token_id``, or None for special/task/marker tokens; an id of
        shared rows belongs to the tokenizer that added them."""
        for name, ranges in self.ranges.items():
            for k, (start, size) in enumerate(ranges):
                if start <= token_id < start + size:
                    return name, k
        return None

    # ---- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "size": len(self.tokens),
            "tasks": self.tasks,
            "markers": self.markers,
            "ranges": {k: [list(r) for r in v] for k, v in self.ranges.items()},
            "tokens": self.tokens,
        }

    def save(self, path: str | os.PathLike) -> None:
        from speechlm.utils.fileio import write_json

        write_json(path, self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict, where: str = "token_list") -> "Vocabulary":
        if data.get("format_version") != FORMAT_VERSION:
            raise VocabularyError(f"{where}: unsupported format_version {data.get('format_version')!r}")
        v = cls()
        v.tokens = list(data["tokens"])
        v._index = {t: i for i, t in enumerate(v.tokens)}
        v.tasks = {k: int(i) for k, i in data["tasks"].items()}
        v.markers = {k: int(i) for k, i in data["markers"].items()}
        v.ranges = {k: [(int(a), int(b)) for a, b in r] for k, r in data["ranges"].items()}
        if len(v._index) != len(v.tokens):
            raise VocabularyError(f"{where}: duplicate tokens in the token list")
        for name, tid in {**{f"<task:{k}>": i for k, i in v.tasks.items()},
                          **{f"<seg:{k}>": i for k, i in v.markers.items()}}.items():
            if v.tokens[tid] != name:
                raise VocabularyError(f"{where}: id {tid} should be {name!r}, found {v.tokens[tid]!r}")
        return v

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary not found: {path} (build it with `speechlm vocab`)")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), where=str(path))
