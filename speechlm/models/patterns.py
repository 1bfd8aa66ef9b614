"""Stream strategies as patterns: how a ``[T, S]`` frame grid is laid out for the backbone.

A pattern maps each (position, stream) slot of its output grid to a slot of the input grid (or
to nothing: a fill slot holding ``<pad>`` with no loss). ``build`` applies the map, ``revert``
inverts it, ``revert_logits`` brings per-slot logits back to the input grid. Maps are computed
per row from the position kinds of :mod:`speechlm.data.sequence`, so segment boundaries are
respected: delayed tokens never spill into the next segment.

The model predicts output row ``p + 1`` from rows ``<= p`` (all output streams of a row at once,
or stream by stream for ``multiscale``).

A pattern is the whole stream strategy: besides the layout it says how many rows a segment takes
(:meth:`Pattern.segment_rows`, :meth:`Pattern.tail_rows`: batching budgets, the progress input),
which slots to generate at each decoding step and which frame each holds (:meth:`Pattern.step_slots`),
the modules it adds to the model and the config keys they read (:meth:`Pattern.modules`,
:attr:`Pattern.config_keys`), its loss (:meth:`Pattern.loss`) and an optional pass after decoding
(:meth:`Pattern.after_decoding`). A new strategy is one subclass plus ``@PATTERNS.register(name)``.

Example:
    >>> pat = PATTERNS.get("delay")(n_streams=4)
    >>> lay = pat.build(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths)
    >>> torch.equal(pat.revert(lay.tokens, lay, batch.tokens.shape[1]), batch.tokens)
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.sequence import AUDIO_COND, AUDIO_TGT, PAD, SPECIAL
from speechlm.registry import Registry

PATTERNS: Registry[type["Pattern"]] = Registry("stream strategy", entry_points="speechlm.strategies")
#: the stream strategy of a ``ModelConfig`` that names none
DEFAULT_STRATEGY = "delay"


class Slot(NamedTuple):
    """One token to generate at a decoding step: model stream ``stream`` takes tokenizer stream
    ``src`` of the segment's frame ``frame``; where ``can_end`` the segment may end there instead
    (an end token after ``frame`` frames)."""

    stream: int
    src: int
    frame: int
    can_end: bool = False


@dataclass
class Layout:
    """A batch laid out by a pattern.

    tokens/weight: ``[B, T', S']``; kinds: ``[B, T']``; lengths: ``[B]``;
    src: ``[B, T', S']`` flat input index ``t * S + s`` of each output slot (-1 for fill);
    pos: ``[B, T]`` output row of input row ``t`` (its stream-0 slot; -1 past the end).
    """

    tokens: torch.Tensor
    weight: torch.Tensor
    kinds: torch.Tensor
    lengths: torch.Tensor
    src: torch.Tensor
    pos: torch.Tensor


def runs(kinds: np.ndarray) -> list[tuple[int, int, int]]:
    """Split a kinds row into maximal runs ``(start, end, kind)``."""
    if len(kinds) == 0:
        return []
    cut = np.flatnonzero(np.diff(kinds.astype(np.int64))) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(kinds)]])
    return [(int(a), int(b), int(kinds[a])) for a, b in zip(starts, ends)]


def used_streams(tokens: np.ndarray, pad_id: int = 0) -> int:
    """Streams a run uses: 1 + the highest stream holding a non-pad token (at least 1)."""
    nz = np.flatnonzero((tokens != pad_id).any(0))
    return int(nz[-1]) + 1 if len(nz) else 1


class Pattern:
    """Base class, the parallel layout: subclasses implement :meth:`row_map` for one row and
    override what else differs (see the module docstring)."""

    name = "parallel"
    #: output head the model uses with this pattern (descriptive: :meth:`modules` adds its parts)
    head = "parallel"
    #: one layout row per frame (the progress input needs it)
    one_row_per_frame = True
    #: ModelConfig keys only this strategy reads, with their defaults; other strategies refuse them
    config_keys: dict[str, Any] = {}

    def __init__(self, n_streams: int, pad_id: int = 0) -> None:
        if n_streams < 1:
            raise ValueError(f"{self.name}: n_streams must be >= 1, got {n_streams}")
        self.S = n_streams
        self.pad_id = pad_id

    @property
    def model_streams(self) -> int:
        """Streams of the output grid (S' above)."""
        return self.S

    def row_map(self, tokens: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For one unpadded row: ``(src [T', S'], out_kinds [T'], pos [T])``."""
        T, S = tokens.shape
        src = np.arange(T * S, dtype=np.int64).reshape(T, S)
        return src, kinds.astype(np.int64), np.arange(T, dtype=np.int64)

    # ---- geometry ---------------------------------------------------------------------
    def tail_rows(self, kind: int, n: int) -> int:
        """Rows a segment of ``kind`` using ``n`` streams takes after its last frame's row (its end
        token's row included when the layout moves it into the segment)."""
        return 0

    def segment_rows(self, kind: int, frames, n: int):
        """Layout rows of a segment of ``frames`` frames (an int or an array) using ``n`` streams."""
        return frames + (frames > 0) * self.tail_rows(kind, n)

    # ---- decoding ---------------------------------------------------------------------
    def step_slots(self, j: int, n: int, end: int | None) -> list[Slot]:
        """What to generate at step ``j`` of a target segment of an ``n``-stream tokenizer whose
        end token came at frame ``end`` (None: not yet); model streams without a slot get ``<pad>``."""
        if end is not None:
            return []
        return [Slot(0, 0, j, True)] + [Slot(k, k, j) for k in range(1, n)]

    def fills_later(self, n: int) -> bool:
        """Whether streams of an ``n``-stream segment are generated by :meth:`after_decoding`
        (its frames are final only then)."""
        return False

    def after_decoding(self, model, prompts, states: list, config, generator: torch.Generator) -> None:
        """A pass after the step-by-step decoding (``states``: the rows' ``RowState``)."""

    # ---- model ------------------------------------------------------------------------
    def modules(self, config, dim: int) -> dict[str, nn.Module | nn.Parameter]:
        """Extra modules of the model, set as its attributes (their state-dict keys are these names)."""
        return {}

    def ar_tokens(self, tokens: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """The layout tokens ``[B, T', S']`` as the autoregressive pass sees them."""
        return tokens

    def loss(self, model, prep, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, sw: list[float],
             stats: dict, rows_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, weight_sum)`` of next-row targets ``y``/``w [B, T'', S']`` at hidden states
        ``h``; ``sw``: per-stream weights, ``rows_in``: the input row at each position."""
        from speechlm.models.losses import ar_loss

        return ar_loss(model.head, h, y, w, sw, stats, rows_in)

    # ---- batch operations -------------------------------------------------------------
    def build(self, tokens: torch.Tensor, weight: torch.Tensor, kinds: torch.Tensor, lengths: torch.Tensor) -> Layout:
        """Lay out a right-padded batch ``[B, T, S]`` (see :class:`Layout`)."""
        B, T, S = tokens.shape
        if S != self.S:
            raise ValueError(f"{self.name} pattern built for {self.S} streams got tokens with {S}")
        tok_np, kind_np = tokens.cpu().numpy(), kinds.cpu().numpy()
        maps = [self.row_map(tok_np[b, : int(n)], kind_np[b, : int(n)]) for b, n in enumerate(lengths.tolist())]
        T2 = max(1, max(len(m[0]) for m in maps))
        S2 = self.model_streams
        src = np.full((B, T2, S2), -1, dtype=np.int64)
        out_kinds = np.full((B, T2), PAD, dtype=np.int64)
        pos = np.full((B, T), -1, dtype=np.int64)
        for b, (s, k, p) in enumerate(maps):
            src[b, : len(s)], out_kinds[b, : len(k)], pos[b, : len(p)] = s, k, p
        dev = tokens.device
        src_t = torch.from_numpy(src).to(dev)
        flat = src_t.clamp(min=0).view(B, -1)
        valid = src_t >= 0
        out_tok = tokens.reshape(B, T * S).gather(1, flat).view(B, T2, S2)
        out_tok = torch.where(valid, out_tok, torch.full_like(out_tok, self.pad_id))
        out_w = weight.reshape(B, T * S).gather(1, flat).view(B, T2, S2) * valid
        return Layout(
            tokens=out_tok, weight=out_w, kinds=torch.from_numpy(out_kinds).to(dev),
            lengths=torch.tensor([len(m[0]) for m in maps], dtype=torch.int64, device=dev),
            src=src_t, pos=torch.from_numpy(pos).to(dev),
        )

    def _dst(self, layout: Layout, T: int) -> torch.Tensor:
        """``[B, T * S]`` flat output index of each input slot (-1 where no output slot holds it)."""
        B, T2, S2 = layout.src.shape
        dst = torch.full((B, T * self.S + 1), -1, dtype=torch.int64, device=layout.src.device)
        src = layout.src.view(B, -1)
        idx = torch.where(src >= 0, src, torch.full_like(src, T * self.S))  # fills go to a dump slot
        dst.scatter_(1, idx, torch.arange(T2 * S2, device=src.device).expand(B, -1).contiguous())
        return dst[:, :-1]

    def revert(self, tokens: torch.Tensor, layout: Layout, T: int) -> torch.Tensor:
        """Output grid ``[B, T', S']`` -> input grid ``[B, T, S]`` (``<pad>`` where nothing maps)."""
        B = tokens.shape[0]
        dst = self._dst(layout, T)
        out = tokens.reshape(B, -1).gather(1, dst.clamp(min=0))
        out = torch.where(dst >= 0, out, torch.full_like(out, self.pad_id))
        return out.view(B, T, self.S)

    def revert_logits(self, logits: torch.Tensor, layout: Layout, T: int) -> torch.Tensor:
        """Per-slot logits ``[B, T', S', V]`` -> ``[B, T, S, V]`` (zeros where nothing maps)."""
        B, V = logits.shape[0], logits.shape[-1]
        dst = self._dst(layout, T)
        out = logits.reshape(B, -1, V).gather(1, dst.clamp(min=0)[..., None].expand(-1, -1, V))
        out = out * (dst >= 0)[..., None]
        return out.view(B, T, self.S, V)


@PATTERNS.register("parallel")
class ParallelPattern(Pattern):
    """One row per frame, every stream predicted at once (MusicGen "parallel")::

        row:       0    1    2    3
        stream 0:  a0   a1   a2   a3
        stream 1:  b0   b1   b2   b3
        stream 2:  c0   c1   c2   c3
    """

    name = "parallel"


@PATTERNS.register("delay")
class DelayPattern(Pattern):
    """Stream k of an audio target segment shifted by k rows (MusicGen / Moshi "delay").

    Each audio target run of L frames using n streams takes ``L + n - 1`` rows; the token that
    follows the segment (``<eos>`` or the next segment marker, E) moves into stream 0 of the first
    tail row, and the next segment starts only after the tail, so nothing leaks across segments.
    ``.`` is a fill slot (``<pad>``, no loss)::

        input:   M a0 a1 a2 E  t0        output:  M a0 a1 a2 E  .  t0
                 . b0 b1 b2 .  .                  .  . b0 b1 b2 .  .
                 . c0 c1 c2 .  .                  .  .  . c0 c1 c2 .

    Text, special tokens and audio conditions keep the parallel layout.
    """

    name = "delay"

    def row_map(self, tokens: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T, S = tokens.shape
        rows, out_kinds = [], []
        pos = np.full(T, -1, dtype=np.int64)
        n_out = 0
        skip_until = -1
        for a, e, kind in runs(kinds):
            if a < skip_until:  # the E token absorbed into the previous tail
                a = skip_until
                if a >= e:
                    continue
            if kind != AUDIO_TGT:
                idx = np.arange(a, e, dtype=np.int64)
                rows.append(idx[:, None] * S + np.arange(S))
                out_kinds.append(np.full(e - a, kind, dtype=np.int64))
                pos[a:e] = n_out + np.arange(e - a)
                n_out += e - a
                continue
            L, n = e - a, used_streams(tokens[a:e], self.pad_id)
            block = np.full((L + self.tail_rows(kind, n), S), -1, dtype=np.int64)
            for k in range(n):
                block[k : k + L, k] = (a + np.arange(L)) * S + k
            bk = np.full(len(block), AUDIO_TGT, dtype=np.int64)
            pos[a:e] = n_out + np.arange(L)
            if n > 1 and e < T and kinds[e] == SPECIAL:
                block[L, 0] = e * S
                bk[L] = SPECIAL
                pos[e] = n_out + L
                skip_until = e + 1
            rows.append(block)
            out_kinds.append(bk)
            n_out += len(block)
        if not rows:
            return np.zeros((0, S), dtype=np.int64), np.zeros(0, dtype=np.int64), pos
        return np.concatenate(rows), np.concatenate(out_kinds), pos

    def tail_rows(self, kind: int, n: int) -> int:
        return n - 1 if kind == AUDIO_TGT else 0

    def step_slots(self, j: int, n: int, end: int | None) -> list[Slot]:
        # stream k starts k steps late; after the end token the tail finishes the delayed streams
        out = [Slot(0, 0, j, True)] if end is None else []
        return out + [Slot(k, k, j - k) for k in range(1, n) if j - k >= 0 and (end is None or j - k < end)]


@PATTERNS.register("flat")
class FlatPattern(Pattern):
    """Audio frames serialized frame-major into a single stream (one row per token)::

        input:  M a0 a1 E        output (one stream):  M a0 b0 c0 a1 b1 c1 E
                . b0 b1 .
                . c0 c1 .
    """

    name = "flat"
    one_row_per_frame = False

    @property
    def model_streams(self) -> int:
        return 1

    def segment_rows(self, kind: int, frames, n: int):
        return frames * n if kind in (AUDIO_COND, AUDIO_TGT) else frames

    def step_slots(self, j: int, n: int, end: int | None) -> list[Slot]:
        # one token per step, cycling through the tokenizer's streams; an end only at a frame start
        return [] if end is not None else [Slot(0, j % n, j // n, j % n == 0)]

    def row_map(self, tokens: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T, S = tokens.shape
        rows, out_kinds = [], []
        pos = np.full(T, -1, dtype=np.int64)
        n_out = 0
        for a, e, kind in runs(kinds):
            n = used_streams(tokens[a:e], self.pad_id) if kind in (AUDIO_COND, AUDIO_TGT) else 1
            idx = ((np.arange(a, e)[:, None] * S) + np.arange(n)).reshape(-1, 1)
            rows.append(idx)
            out_kinds.append(np.full(len(idx), kind, dtype=np.int64))
            pos[a:e] = n_out + np.arange(e - a) * n
            n_out += len(idx)
        if not rows:
            return np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64), pos
        return np.concatenate(rows), np.concatenate(out_kinds), pos


@PATTERNS.register("multiscale")
class MultiscalePattern(Pattern):
    """Parallel layout for the global transformer; a local (depth) transformer then predicts the
    streams of the next row one after another (UniAudio / Moshi)::

        global row:  0    1    2          local steps for row p+1:  h_p -> a, a -> b, b -> c
        stream 0:    a0   a1   a2
        stream 1:    b0   b1   b2
    """

    name = "multiscale"
    head = "depth"
    config_keys = {"local_dim": 128, "local_layers": 2, "local_heads": 4}

    def modules(self, config, dim: int) -> dict[str, nn.Module | nn.Parameter]:
        from speechlm.models.heads import DepthHead

        return {"depth": DepthHead(dim, self.S, config.local_dim, config.local_layers, config.local_heads,
                                   config.norm_eps)}

    def loss(self, model, prep, h, y, w, sw, stats, rows_in):
        from speechlm.models.losses import depth_loss

        return depth_loss(model.depth, model.head, model.embed.emb, h, y, w, sw, stats, rows_in)


@PATTERNS.register("ar_nar")
class ArNarPattern(Pattern):
    """Parallel layout; stream 0 is autoregressive (audio target rows enter the AR pass with
    stream 0 only) and streams 1.. of audio targets are predicted non-autoregressively, level by
    level, by a second bidirectional pass (VALL-E)::

        AR pass:   M a0 a1 a2 E      NAR pass, level 2:  M a0 a1 a2 E
                                                         . b0 b1 b2 .   -> predict c0 c1 c2
    """

    name = "ar_nar"
    head = "ar_nar"
    config_keys = {"nar_weight": 1.0}  # weight of the non-autoregressive loss

    def step_slots(self, j: int, n: int, end: int | None) -> list[Slot]:
        return [] if end is not None else [Slot(0, 0, j, True)]  # streams 1.. come from the NAR pass

    def fills_later(self, n: int) -> bool:
        return n > 1

    def modules(self, config, dim: int) -> dict[str, nn.Module | nn.Parameter]:
        return {"nar_level": nn.Parameter(torch.zeros(self.S, dim))}

    def ar_tokens(self, tokens: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        tok = tokens.clone()
        tok[..., 1:][kinds == AUDIO_TGT] = self.pad_id
        return tok

    def nar_inputs(self, layout: Layout, level: torch.Tensor, level_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and extra embeddings of the NAR pass at ``level [B]``: audio-target rows keep
        streams ``< level`` and get the level's embedding (``level_emb [S, D]``)."""
        tgt = (layout.kinds == AUDIO_TGT)[..., None]
        keep = torch.arange(layout.tokens.shape[-1], device=layout.tokens.device)[None, None] < level[:, None, None]
        tok = torch.where(tgt & ~keep, torch.full_like(layout.tokens, self.pad_id), layout.tokens)
        return tok, level_emb[level][:, None, :] * tgt.to(level_emb.dtype)

    def loss(self, model, prep, h, y, w, sw, stats, rows_in):
        from speechlm.models.losses import ar_loss, nar_loss

        loss_sum, weight_sum = ar_loss(model.head, h, y[..., :1], w[..., :1], sw[:1], stats, rows_in)

        def encode(level: torch.Tensor) -> torch.Tensor:
            tok, extra = self.nar_inputs(prep.layout, level, model.nar_level)
            return model.encode(prep, tok, extra, bidirectional=True)

        ls, ws = nar_loss(model.head, encode, prep.layout, prep.last, prep.kinds, sw, stats)
        return loss_sum + model.config.nar_weight * ls, weight_sum + ws

    def after_decoding(self, model, prompts, states, config, generator) -> None:
        if self.S > 1:
            from speechlm.infer.nar import nar_fill

            nar_fill(model, prompts, states, config, generator)


__all__ = ["PATTERNS", "DEFAULT_STRATEGY", "Pattern", "Layout", "Slot", "runs", "used_streams"]
