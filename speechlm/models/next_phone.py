"""Next-phone input: each frame of a phone-led audio target is told which phone of the text comes
next, so that the model only decides when to move on and never has to count its way through the
text.

A target led by a phone stream (:mod:`speechlm.tokenizers.codec2_phones`) says, frame by frame,
which phone it speaks. The mini recipe's one-voice models spoke the first half of a sentence with
the reference timing, then held phones and padded silence as if done: they lost their place in the
text. With ``ModelConfig.next_phone``, row ``j`` of such a target (the row that holds frame
``j``'s phone) also gets an embedding of the phone that follows frame ``j``'s in the text: the
next one in the target's own phone sequence (silence skipped, runs of one phone merged) while
training, the next one in the text's phones under :class:`speechlm.infer.follow.PhoneFollower`
while decoding (``DecodeConfig.follow_phones``), which walks the same way.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.sequence import AUDIO_TGT
from speechlm.models.patterns import runs

#: a phone-led stream's silence (local id 0 of :data:`speechlm.tokenizers.codec2_phones.PHONES`)
SILENCE = 0


def phone_runs(phones, silence: int = SILENCE) -> list[int]:
    """The phones a stream walks through: silence dropped, runs of one phone merged."""
    seq: list[int] = []
    for p in phones:
        if p != silence and (not seq or seq[-1] != p):
            seq.append(int(p))
    return seq


def next_phones(frames: np.ndarray, silence: int = SILENCE) -> np.ndarray:
    """For frame phones ``frames [L]`` (local ids), the phone that comes after each frame's in the
    text, ``-1`` after the last one; walks as :meth:`PhoneFollower.observe` does."""
    seq = phone_runs(frames.tolist(), silence)
    out = np.full(len(frames), -1, dtype=np.int64)
    pos = -1
    for t, p in enumerate(frames.tolist()):
        if pos + 1 < len(seq) and seq[pos + 1] == p:
            pos += 1
        if pos + 1 < len(seq):
            out[t] = seq[pos + 1]
    return out


class NextPhoneEmbedding(nn.Module):
    """Local phone id (``-1``: none) -> an additive row embedding; zero at initialisation, so a model
    with it starts like one without."""

    def __init__(self, n_phones: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(n_phones + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, phone: torch.Tensor) -> torch.Tensor:
        return self.table(phone + 1) * (phone >= 0)[..., None]


def layout_next_phones(tokens: torch.Tensor, kinds: torch.Tensor, lengths: torch.Tensor,
                       pos: torch.Tensor, rows: int, vocab, tokenizer: str) -> torch.Tensor:
    """Per layout row ``[B, rows]``: the next phone (local id, ``-1``: none) of the rows that hold a
    frame of a ``tokenizer`` audio target (its frames' rows; end and tail rows get none)."""
    a0, b0 = vocab.stream_range(tokenizer, 0)
    out = np.full((kinds.shape[0], rows), -1, dtype=np.int64)
    kind_np, pos_np, tok_np = kinds.cpu().numpy(), pos.cpu().numpy(), tokens.cpu().numpy()
    for b, n in enumerate(lengths.tolist()):
        for a, e, kind in runs(kind_np[b, :n]):
            if kind != AUDIO_TGT or not a0 <= int(tok_np[b, a, 0]) < b0:
                continue
            start = int(pos_np[b, a])
            out[b, start : start + e - a] = next_phones(tok_np[b, a:e, 0] - a0)
    return torch.from_numpy(out).to(tokens.device)


__all__ = ["NextPhoneEmbedding", "layout_next_phones", "next_phones", "phone_runs", "SILENCE"]
