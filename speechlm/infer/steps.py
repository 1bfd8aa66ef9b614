"""Per-row decoding state: which target segment a row is in, what each stream may emit at the next
step (sample from a vocabulary range, or a forced token), and de-interleaving of the emitted
rows into frames when a segment ends. One place for every stream strategy's step rules:

- parallel / multiscale: every stream of the tokenizer sampled each step;
- ar_nar: stream 0 only (the NAR pass fills the rest afterwards);
- delay: stream k starts k steps late; after stream 0 emits the end token the remaining
  ``n - 2`` tail rows finish the delayed streams (stream 0 forced to ``<pad>``);
- flat: one token per step, cycling through the tokenizer's streams (end only at frame start).

A segment ends when stream 0 emits ``<eos>`` or the next target's marker; ``min_len`` forbids
that before ``min_len`` frames and ``max_len`` forces it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from speechlm.vocab import Vocabulary

SAMPLE, FORCE = "s", "f"


@dataclass
class Segment:
    """One generated target segment: tokenizer name, global ids ``[frames, n]``, the end token."""

    tokenizer: str
    frames: np.ndarray
    end: int
    forced: bool = False  # the length limit ended it, not the model


@dataclass
class Hypothesis:
    """A finished generation: its segments and score: the beam search's (length-normalised) joint
    score; for greedy/sample the log-probability of its sampled tokens at temperature 1 (after
    masks and guidance); CTC-greedy: the best path's."""

    segments: list[Segment] = field(default_factory=list)
    score: float = 0.0

    @property
    def stopped(self) -> bool:
        """Every segment ended by the model's own end token (none cut at a length limit)."""
        return not any(seg.forced for seg in self.segments)

    def frames(self, n_streams: int, pad_id: int = 0) -> np.ndarray:
        """All target frames ``[frames, n_streams]`` (global ids, pad in unused streams)."""
        parts = []
        for seg in self.segments:
            f = np.full((len(seg.frames), n_streams), pad_id, dtype=np.int64)
            f[:, : seg.frames.shape[1]] = seg.frames
            parts.append(f)
        return np.concatenate(parts) if parts else np.zeros((0, n_streams), dtype=np.int64)


class RowState:
    """Decoding state of one row (see the module docstring)."""

    def __init__(self, pattern: str, targets: list[str], vocab: Vocabulary, n_streams: int,
                 min_len: int, max_len: int) -> None:
        self.pattern, self.targets, self.vocab, self.S = pattern, targets, vocab, n_streams
        self.min_len, self.max_len = min_len, max_len
        self.seg = 0
        self.progress_len = 0  # frames of the one audio target, for models with the progress input
        self.done = False
        self.hyp = Hypothesis()
        self._start()

    def _start(self) -> None:
        self.tok = self.targets[self.seg]
        self.n = self.vocab.n_streams(self.tok)
        self.j = 0
        self.e: int | None = None
        self.survival = 1.0  # probability the model would not have ended this segment yet
        self.forced = False  # its end is forced by max_len
        self.end_tok = self.vocab.eos_id
        self.rows: list[list[int]] = []
        nxt = [self.vocab.marker_id(self.targets[self.seg + 1])] if self.seg + 1 < len(self.targets) else []
        self.ends = tuple(nxt + [self.vocab.eos_id])

    @property
    def model_streams(self) -> int:
        return 1 if self.pattern == "flat" else self.S

    def _s0(self, src: int, can_end: bool, frame: int) -> tuple:
        if can_end and frame >= self.max_len:
            self.forced = True
            return (FORCE, self.ends[0])
        return (SAMPLE, (self.tok, src, self.ends if can_end and frame >= self.min_len else ()))

    def plan(self) -> list[tuple]:
        """Per model stream: ``(SAMPLE, (tokenizer, tokenizer_stream, end_ids))`` or ``(FORCE, id)``."""
        pad = self.vocab.pad_id
        acts: list[tuple] = [(FORCE, pad)] * self.model_streams
        j, n = self.j, self.n
        if self.pattern == "flat" and n > 1:
            acts[0] = self._s0(j % n, j % n == 0, j // n)
            return acts
        if self.pattern == "delay" and n > 1:
            if self.e is None:
                acts[0] = self._s0(0, True, j)
            for k in range(1, n):
                if j - k >= 0 and (self.e is None or j - k < self.e):
                    acts[k] = (SAMPLE, (self.tok, k, ()))
            return acts
        acts[0] = self._s0(0, True, j)
        if self.pattern != "ar_nar":
            for k in range(1, n):
                acts[k] = (SAMPLE, (self.tok, k, ()))
        return acts

    def progress_at(self, row: list[int]) -> tuple[int, int]:
        """``(j, L)`` of the progress input for ``row`` before it is recorded (``L = 0``: none):
        rows of the segment, and for the delay pattern its end and tail rows too (as in
        :func:`speechlm.models.progress.layout_progress`)."""
        if not self.progress_len or (row[0] in self.ends and not (self.pattern == "delay" and self.n > 1)):
            return (0, 0)
        return (self.j, self.progress_len)

    def advance(self, row: list[int]) -> list[int]:
        """Record the emitted row; returns the row to feed back (streams cleared after an end token)."""
        pad, n, j = self.vocab.pad_id, self.n, self.j
        is_end = row[0] in self.ends
        if self.pattern == "delay" and n > 1:
            if self.e is None and is_end:
                self.e, self.end_tok = j, row[0]
            self.rows.append(row)
            if self.e is not None and j >= self.e + n - 2:
                R = np.asarray(self.rows, dtype=np.int64)
                frames = np.stack([R[np.arange(self.e) + k, k] for k in range(n)], 1) if self.e else np.zeros((0, n), np.int64)
                return self._finish(frames, row)
        elif is_end:
            row = [row[0]] + [pad] * (len(row) - 1)
            if self.pattern == "flat" and n > 1:
                R = np.asarray([r[0] for r in self.rows], dtype=np.int64).reshape(-1, n)
            else:
                R = np.asarray(self.rows, dtype=np.int64).reshape(-1, len(row))[:, :n]
            self.end_tok = row[0]
            return self._finish(R, row)
        else:
            self.rows.append(row)
        self.j += 1
        return row

    def _finish(self, frames: np.ndarray, row: list[int]) -> list[int]:
        self.hyp.segments.append(Segment(self.tok, frames.reshape(-1, self.n), self.end_tok, self.forced))
        if self.end_tok == self.vocab.eos_id or self.seg + 1 >= len(self.targets):
            self.done = True
        else:
            self.seg += 1
            self._start()
        return row


class Masker:
    """Cached boolean masks over a model stream's logit columns for an allowed set."""

    def __init__(self, model) -> None:
        self.model = model
        self.vocab: Vocabulary = model.vocab
        self._cache: dict = {}

    def columns(self, k: int) -> int:
        ids = self.model.head.ids(k)
        return len(self.vocab) if ids is None else len(ids)

    def mask(self, k: int, key: tuple | None, device) -> torch.Tensor:
        """Allowed columns of model stream ``k`` for ``key = (tokenizer, stream, end_ids)`` (None: all)."""
        ck = (k, key)
        if ck not in self._cache:
            m = torch.zeros(self.columns(k), dtype=torch.bool)
            if key is None:
                m[:] = True
            else:
                tok, src, ends = key
                a, b = self.vocab.stream_range(tok, src)
                if k == 0:
                    m[a:b] = True
                    m[list(ends)] = True
                else:
                    cols = self.model.head.local_targets(torch.arange(a, b), k)
                    if bool((cols < 0).any()):
                        raise ValueError(f"tokenizer {tok!r} stream {src} is not in model stream {k}'s columns")
                    m[cols] = True
            self._cache[ck] = m.to(device)
        return self._cache[ck]

    def allowed(self, k: int, key: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed columns of model stream ``k`` for ``key`` and their head weight rows (cached,
        refreshed when the weights change), so logits are computed for those columns only."""
        w = self.model.head.weight
        ck = ("rows", k, key)
        hit = self._cache.get(ck)
        if hit is None or hit[0] != (w._version, w.data_ptr()):
            cols = self.mask(k, key, device).nonzero()[:, 0]
            ids = self.to_global(k, cols)
            hit = ((w._version, w.data_ptr()), cols, w.detach().index_select(0, ids))
            self._cache[ck] = hit
        return hit[1], hit[2]

    def to_global(self, k: int, cols: torch.Tensor) -> torch.Tensor:
        ids = self.model.head.ids(k)
        return cols if ids is None else ids[cols]


__all__ = ["RowState", "Masker", "Segment", "Hypothesis", "SAMPLE", "FORCE"]
