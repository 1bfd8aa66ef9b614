"""What the auxiliary heads read from backbone hidden states: the CTC head's audio-condition
frames and the length head's features. Training (``losses.py``) and decoding both use them.
"""
from __future__ import annotations

import torch

from speechlm.data.sequence import AUDIO_COND, TEXT_COND


def left_aligned(is_sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the selected entries of each row, left-aligned ``[B, L]``, their validity and counts."""
    n = is_sel.sum(1)
    L = max(1, int(n.max()))
    order = torch.argsort((~is_sel).to(torch.int8), dim=1, stable=True)[:, :L]
    return order, torch.arange(L, device=is_sel.device)[None] < n[:, None], n


def ctc_frames(kinds: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``h [B, T, D]`` of each row's audio-condition positions (``kinds [B, T]``),
    left-aligned: ``[B, Tc, D]``, lengths ``[B]``."""
    order, _, n = left_aligned(kinds == AUDIO_COND)
    return h.gather(1, order[..., None].expand(-1, -1, h.shape[-1])), n


def length_units(kinds: torch.Tensor) -> torch.Tensor:
    """Rows ``[B]`` the length head's ratio is relative to: text conditions, or all conditions
    when a row has none (raw sequence ``kinds [B, T]``)."""
    text = (kinds == TEXT_COND).sum(1)
    return torch.where(text > 0, text, text + (kinds == AUDIO_COND).sum(1))


def length_features(h: torch.Tensor, kinds: torch.Tensor, marker: torch.Tensor) -> torch.Tensor:
    """What the length head reads, ``[B, 3 D]``: the hidden state at the first target marker
    (``marker [B]``), and the mean hidden state over the audio and over the text conditions."""
    def mean(sel: torch.Tensor) -> torch.Tensor:
        m = sel.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    hm = h[torch.arange(h.shape[0], device=h.device), marker]
    return torch.cat([hm, mean(kinds == AUDIO_COND), mean(kinds == TEXT_COND)], -1)


__all__ = ["ctc_frames", "left_aligned", "length_features", "length_units"]
