"""Per-row decoding state: which target segment a row is in, what each stream may emit at the next
step (sample from a vocabulary range, or a forced token), and the frames the emitted rows hold.
The stream strategy decides the slots of each step (:meth:`speechlm.models.patterns.Pattern.step_slots`:
which model stream takes which tokenizer stream of which frame, and where the segment may end);
this module applies the length limits and reads the frames back, for any strategy.

A segment ends when stream 0 emits ``<eos>`` or the next target's marker; ``min_len`` forbids
that before ``min_len`` frames and ``max_len`` forces it. The segment is complete once the rows
its layout keeps after the end token (the pattern's tail rows, e.g. delay's delayed streams) are
emitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from speechlm.data.sequence import AUDIO_TGT, TEXT_TGT
from speechlm.models.patterns import Pattern, Slot
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
    """Decoding state of one row (see the module docstring); ``pattern``: the model's
    :class:`~speechlm.models.patterns.Pattern`."""

    def __init__(self, pattern: Pattern, targets: list[str], vocab: Vocabulary, min_len: int, max_len: int) -> None:
        self.pattern, self.targets, self.vocab, self.S = pattern, targets, vocab, pattern.S
        self.min_len, self.max_len = min_len, max_len
        self.seg = 0
        self.progress_len = 0  # frames of the one audio target, for models with the progress input
        self.done = False
        self.follower = None  # the rule its target follows (speechlm.infer.follow)
        self.hyp = Hypothesis()
        self._start()

    def _start(self) -> None:
        self.tok = self.targets[self.seg]
        self.n = self.vocab.n_streams(self.tok)
        self.kind = AUDIO_TGT if self.n > 1 else TEXT_TGT
        self.tail = self.pattern.tail_rows(self.kind, self.n)
        self.j = 0
        self.e: int | None = None  # frames of the segment, once its end token came
        self.survival = 1.0  # probability the model would not have ended this segment yet
        self.forced = False  # its end is forced by max_len
        self.end_tok = self.vocab.eos_id
        self.rows: list[list[int]] = []  # rows emitted in this segment (the end token's row too)
        self.grid: list[list[int | None]] = []  # the segment's frames [frame][stream] as far as emitted
        self.n_final = 0  # leading frames with every stream emitted
        self.slots: list[Slot] = []  # of the step being planned
        nxt = [self.vocab.marker_id(self.targets[self.seg + 1])] if self.seg + 1 < len(self.targets) else []
        self.ends = tuple(nxt + [self.vocab.eos_id])

    @property
    def model_streams(self) -> int:
        return self.pattern.model_streams

    def _s0(self, src: int, frame: int) -> tuple:
        if frame >= self.max_len:
            self.forced = True
            return (FORCE, self.ends[0])
        return (SAMPLE, (self.tok, src, self.ends if frame >= self.min_len else ()))

    def plan(self) -> list[tuple]:
        """Per model stream: ``(SAMPLE, (tokenizer, tokenizer_stream, end_ids))`` or ``(FORCE, id)``."""
        acts: list[tuple] = [(FORCE, self.vocab.pad_id)] * self.model_streams
        self.slots = self.pattern.step_slots(self.j, self.n, self.e)
        for sl in self.slots:
            acts[sl.stream] = self._s0(sl.src, sl.frame) if sl.can_end else (SAMPLE, (self.tok, sl.src, ()))
        return acts

    def progress_at(self, row: list[int]) -> tuple[int, int]:
        """``(j, L)`` of the progress input for ``row`` before it is recorded (``L = 0``: none):
        rows of the segment, its end token's and tail rows included where the layout keeps them
        in the segment (as in :func:`speechlm.models.progress.layout_progress`)."""
        if not self.progress_len or (row[0] in self.ends and not self.tail):
            return (0, 0)
        if self.follower is not None:
            return (self.j, self.follower.length(self.j, self.progress_len))
        return (self.j, self.progress_len)

    def next_phone_at(self, row: list[int]) -> int:
        """The next-phone input for ``row`` (its follower's next phone of the text, local id; -1: none),
        after the follower saw the row's phone and before the row is recorded: only rows that hold a
        frame get one (as in :func:`speechlm.models.next_phone.layout_next_phones`)."""
        if self.follower is None or row[0] in self.ends or (self.e is not None and self.j >= self.e):
            return -1
        return self.follower.next_phone()

    def advance(self, row: list[int]) -> list[int]:
        """Record the emitted row; returns the row to feed back (slots past the end cleared)."""
        end = next((sl for sl in self.slots if sl.can_end and row[sl.stream] in self.ends), None)
        if end is not None and self.e is None:
            self.e, self.end_tok = end.frame, row[end.stream]
        if self.e is not None:  # slots past the end hold no frame: fed back as <pad>
            row = list(row)
            for sl in self.slots:
                if sl is not end and sl.frame >= self.e:
                    row[sl.stream] = self.vocab.pad_id
        for sl in self.slots:
            if sl is end or (self.e is not None and sl.frame >= self.e):
                continue
            while len(self.grid) <= sl.frame:
                self.grid.append([None] * self.n)
            self.grid[sl.frame][sl.src] = row[sl.stream]
        while self.n_final < len(self.grid) and None not in self.grid[self.n_final]:
            self.n_final += 1
        self.rows.append(row)
        if self.e is not None and self.j >= self.e + max(self.tail - 1, 0):
            return self._finish(row)
        self.j += 1
        return row

    def final_frames(self, start: int = 0) -> np.ndarray:
        """Frames ``[start, n_final)`` whose every stream is emitted ``[frames, n]`` (global ids)."""
        stop = self.n_final if self.e is None else min(self.n_final, self.e)
        return np.asarray(self.grid[start:stop], dtype=np.int64).reshape(-1, self.n)

    def _finish(self, row: list[int]) -> list[int]:
        pad = self.vocab.pad_id
        frames = np.asarray([[pad if t is None else t for t in f] for f in self.grid[: self.e]],
                            dtype=np.int64).reshape(-1, self.n)
        self.hyp.segments.append(Segment(self.tok, frames, self.end_tok, self.forced))
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
