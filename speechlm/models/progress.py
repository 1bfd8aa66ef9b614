"""Target progress input: each row of a generated audio segment is told how far through the
segment it is, so the model knows where it stands in the text and when to end.

A segment of ``L`` frames takes rows ``j = 0 .. L - 1`` plus the pattern's tail rows (delay:
``0 .. L + n - 2``, the end token's row and the delayed tail included). Row ``j`` gets features of the share done,
``(j + 1) / L``, and of the frames left before the end token is due, ``L - 1 - j`` (the row
whose hidden state predicts the end has 0 left). Training takes ``L`` from the data; decoding
from the length head's prediction (``ModelConfig.length_weight``), scaled by
``DecodeConfig.length_scale``: total-duration conditioning, as in F5-TTS, but autoregressive.

Only audio segments of a multi-stream tokenizer (codecs) that are an example's whole target get
the input (the length head predicts all target rows of an example), e.g. TTS speech; text
targets never do.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.sequence import AUDIO_TGT, TEXT_TGT
from speechlm.models.patterns import runs, used_streams

#: frequencies (in half turns over the segment) of the share-done features
_FREQS = (1, 2, 3, 4, 6, 8)
#: time constants (frames) of the frames-left features
_TAUS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
N_FEATURES = 2 + 2 * len(_FREQS) + len(_TAUS) + 1


def progress_features(j: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Features ``[..., N_FEATURES]`` of row ``j`` in a segment of ``length`` frames (zeros where
    ``length <= 0``: no progress input)."""
    on = (length > 0).to(torch.float32)[..., None]
    L = length.to(torch.float32).clamp(min=1)
    done = (j.to(torch.float32) + 1) / L
    left = L - 1 - j.to(torch.float32)
    ang = done[..., None] * math.pi * torch.tensor(_FREQS, dtype=torch.float32, device=j.device)
    soon = torch.exp(-left.clamp(min=0)[..., None] / torch.tensor(_TAUS, dtype=torch.float32, device=j.device))
    f = torch.cat([done[..., None], done[..., None].clamp(max=2) ** 2, ang.sin(), ang.cos(), soon,
                   (left < 0).to(torch.float32)[..., None]], -1)
    return f * on


class ProgressEmbedding(nn.Module):
    """Progress features -> an additive row embedding; zero at initialisation, so a model with it
    starts like one without."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(N_FEATURES, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, j: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        on = (length > 0)[..., None]
        return self.proj(progress_features(j, length).to(self.proj.weight.dtype)) * on


def takes_progress(vocab, tokenizer: str) -> bool:
    """Whether a whole target of ``tokenizer`` gets the progress input (multi-stream audio tokenizers:
    codecs); training and decoding both ask this."""
    return vocab.n_streams(tokenizer) > 1


def layout_progress(pattern, tokens: torch.Tensor, kinds: torch.Tensor, lengths: torch.Tensor,
                    pos: torch.Tensor, rows: int, vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layout row ``[B, rows]``: its index ``j`` in its audio target segment and the segment's
    frames ``L`` (0: no progress input), from the raw batch and the layout's ``pos``; a segment's rows
    are what ``pattern`` (a :class:`speechlm.models.patterns.Pattern`) gives it."""
    B = tokens.shape[0]
    J = np.zeros((B, rows), dtype=np.int64)
    Ls = np.zeros((B, rows), dtype=np.int64)
    kind_np, pos_np = kinds.cpu().numpy(), pos.cpu().numpy()
    tok_np = tokens.cpu().numpy()
    for b, n in enumerate(lengths.tolist()):
        k = kind_np[b, :n]
        n_tgt = int(((k == AUDIO_TGT) | (k == TEXT_TGT)).sum())
        for a, e, kind in runs(k):
            if kind != AUDIO_TGT or e - a != n_tgt:
                continue
            owner = vocab.tokenizer_of(int(tok_np[b, a, 0]))
            if owner is None or not takes_progress(vocab, owner[0]):
                continue
            L = e - a
            span = int(pattern.segment_rows(AUDIO_TGT, L, used_streams(tok_np[b, a:e], vocab.pad_id)))
            start = int(pos_np[b, a])
            J[b, start : start + span] = np.arange(span)
            Ls[b, start : start + span] = L
    dev = tokens.device
    return torch.from_numpy(J).to(dev), torch.from_numpy(Ls).to(dev)


__all__ = ["ProgressEmbedding", "progress_features", "layout_progress", "takes_progress", "N_FEATURES"]
