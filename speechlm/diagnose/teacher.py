"""The teacher-forced pass over an example's audio target: the training forward on the true
sequence, cut to the rows of the target segment in the model's layout.

For each layout row of the segment (its frames, the end token's row and the pattern's tail rows)
:class:`TargetRows` keeps the hidden state that predicts it (the backbone output one row earlier:
what decoding samples that row from), the true tokens, and which target frame and tokenizer stream
each slot holds. The progress input may be given another length than the true one (what decoding
gives it: the length head's prediction), to measure what a length error costs.

Example:
    >>> rows = target_rows(model, batch)                 # one TargetRows per example
    >>> logits = frame_logits(model, rows[0])            # per tokenizer stream [frames, codebook]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from speechlm.data.batch import Batch
from speechlm.data.sequence import AUDIO_TGT

#: stream strategies whose output head predicts every stream of a row from the backbone state
SUPPORTED = ("parallel", "delay", "flat")


@dataclass
class TargetRows:
    """One example's audio target in the layout (``R`` rows, ``S'`` model streams).

    ``rows [R, S']``: true layout tokens (global ids); ``frame``/``stream [R, S']``: the target frame
    and tokenizer stream of each slot (-1: a fill slot or the end token); ``end [R, S']``: the slot
    holding the end token; ``h [R, D]``: the hidden state that predicts each row (float32);
    ``frames [F, n]``: the true local tokens; ``progress_len``: the length the progress input had
    (0: the model has none)."""

    id: str
    tokenizer: str
    frames: np.ndarray
    rows: torch.Tensor
    frame: np.ndarray
    stream: np.ndarray
    end: np.ndarray
    h: torch.Tensor
    progress_len: int


def check_model(model) -> None:
    if model.pattern.name not in SUPPORTED or model.pattern.head != "parallel":
        raise ValueError(f"tts-diagnose reads every stream from the backbone state ({', '.join(SUPPORTED)}); "
                         f"strategy {model.pattern.name!r} predicts streams with its own head")


def target_span(kinds: np.ndarray) -> tuple[int, int]:
    """``[a, e)`` raw positions of the one audio target run (an error when there is none or several)."""
    tgt = np.flatnonzero(kinds == AUDIO_TGT)
    if len(tgt) == 0 or tgt[-1] - tgt[0] + 1 != len(tgt):
        raise ValueError("tts-diagnose needs examples with one contiguous audio target segment")
    return int(tgt[0]), int(tgt[-1]) + 1


@torch.no_grad()
def target_rows(model, batch: Batch, progress_len: list[int] | None = None) -> list[TargetRows]:
    """Teacher-forced :class:`TargetRows` of every example of ``batch`` (full sequences, targets
    included). ``progress_len[b] > 0`` replaces the true length the progress input gets."""
    check_model(model)
    vocab = model.vocab
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    if progress_len is not None and prep.progress is not None:
        j, L = prep.progress
        new = torch.tensor(progress_len, dtype=L.dtype, device=L.device)[:, None]
        prep.progress = (j, torch.where((L > 0) & (new > 0), new, L))
    # the training forward (SpeechLM.hidden_states) with the progress input set above
    h = model.backbone(model.embed_prepared(prep), None, model.attention_mask(prep)).float()
    lay = prep.layout
    S = batch.tokens.shape[2]
    out = []
    for b in range(len(batch.lengths)):
        n_tok = int(batch.lengths[b])
        a, e = target_span(batch.kinds[b, :n_tok].cpu().numpy())
        owner = vocab.tokenizer_of(int(batch.tokens[b, a, 0]))
        if owner is None:
            raise ValueError(f"{batch.ids[b]}: the target's first token belongs to no tokenizer")
        tok = owner[0]
        n = vocab.n_streams(tok)
        offsets = torch.tensor([vocab.offset(tok, s) for s in range(n)])
        frames = (batch.tokens[b, a:e, :n].cpu() - offsets).numpy()
        src = lay.src[b].cpu().numpy()
        in_seg = (src >= a * S) & (src < e * S)
        end = src == e * S if e < n_tok else np.zeros_like(in_seg)
        m = int(lay.pos[b, a - 1])  # the row of the segment's marker
        stop = int(np.flatnonzero((in_seg | end).any(1)).max()) + 1
        inv = np.full(src.shape[0], -1, dtype=np.int64)  # layout row -> backbone position holding it
        last = prep.last[b].cpu().numpy()
        ok = last >= 0
        inv[last[ok]] = np.flatnonzero(ok)
        pred = inv[m: stop - 1]
        if (pred < 0).any():
            raise ValueError(f"{batch.ids[b]}: a target row has no backbone position (condition reduction?)")
        L = int(prep.progress[1][b, m + 1]) if prep.progress is not None else 0  # per layout row
        sl = slice(m + 1, stop)
        out.append(TargetRows(
            id=batch.ids[b], tokenizer=tok, frames=frames, rows=lay.tokens[b, sl].cpu(),
            frame=np.where(in_seg[sl], src[sl] // S - a, -1), stream=np.where(in_seg[sl], src[sl] % S, -1),
            end=end[sl], h=h[b, torch.from_numpy(pred).to(h.device)].cpu(), progress_len=L))
    return out


def stream_columns(model, tokenizer: str, s: int, k: int) -> torch.Tensor:
    """Columns of model stream ``k``'s logits that hold tokenizer stream ``s``'s local ids 0..V-1."""
    lo, hi = model.vocab.stream_range(tokenizer, s)
    ids = torch.arange(lo, hi)
    return ids if k == 0 else model.head.local_targets(ids.to(model.head.weight.device), k).cpu()


@torch.no_grad()
def slot_logits(model, h: torch.Tensor, k: int) -> torch.Tensor:
    """Logits ``[R, columns]`` of model stream ``k`` at hidden states ``h [R, D]`` (float32)."""
    return model.logits(h.to(next(model.parameters()).dtype), k).float().cpu()


def frame_logits(model, tr: TargetRows, h: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per tokenizer stream ``s``: logits ``[F, V_s]`` over its own codebook for every target frame
    (from ``h``, default the teacher-forced states)."""
    h = tr.h if h is None else h
    n = tr.frames.shape[1]
    F_ = len(tr.frames)
    out: list[torch.Tensor | None] = [None] * n
    for k in range(tr.frame.shape[1]):
        rows = np.flatnonzero(tr.frame[:, k] >= 0)
        if not len(rows):
            continue
        logits = slot_logits(model, h[torch.from_numpy(rows)], k)
        for s in np.unique(tr.stream[rows, k]).tolist():
            sel = tr.stream[rows, k] == s
            cols = stream_columns(model, tr.tokenizer, s, k)
            if out[s] is None:
                out[s] = torch.zeros(F_, len(cols))
            out[s][torch.from_numpy(tr.frame[rows[sel], k])] = logits[torch.from_numpy(sel)][:, cols]
    missing = [s for s in range(n) if out[s] is None]
    if missing:
        raise ValueError(f"{tr.id}: tokenizer stream {missing[0]} has no slot in the layout")
    return out  # type: ignore[return-value]


def stream_stats(logits: list[torch.Tensor], frames: np.ndarray) -> list[dict[str, float]]:
    """Per stream sums: ``correct`` (argmax == truth), ``ce`` (nats, over the codebook), ``n``."""
    out = []
    for s, lg in enumerate(logits):
        y = torch.from_numpy(frames[:, s].astype(np.int64))
        out.append({"correct": float((lg.argmax(-1) == y).sum()),
                    "ce": float(F.cross_entropy(lg, y, reduction="sum")), "n": float(len(y))})
    return out


__all__ = ["TargetRows", "target_rows", "frame_logits", "stream_stats", "stream_columns", "check_model", "SUPPORTED"]
