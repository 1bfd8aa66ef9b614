"""Frame-rate reduction of audio conditions: ``r`` consecutive rows of an audio-condition run are
stacked into one backbone position (50 Hz codec frames -> 25 Hz with r=2, 12.5 Hz with r=4).

Position ``q`` of the reduced sequence stands for the rows ``members[q]`` of the pattern layout;
it predicts the row after its last member. Rows inside a group other than the last predict
nothing (conditions carry no loss unless a template asks for it; then use ``cond_reduction: 1``).

Example (r=2, C = audio condition rows)::

    layout rows:   T M C C C C C M x       reduced:  T M [CC] [CC] [C] M x
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.sequence import AUDIO_COND, PAD
from speechlm.models.patterns import runs


@dataclass
class Reduction:
    """members ``[B, T'', r]`` (-1 = none), last ``[B, T'']`` (-1 past the end), lengths ``[B]``,
    pos ``[B, T']`` reduced position of each layout row, kinds ``[B, T'']``."""

    members: torch.Tensor
    last: torch.Tensor
    lengths: torch.Tensor
    pos: torch.Tensor
    kinds: torch.Tensor


def reduce_row(kinds: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of one row: ``(members [T'', r], pos [T'])``."""
    groups: list[np.ndarray] = []
    pos = np.zeros(len(kinds), dtype=np.int64)
    for a, e, kind in runs(kinds):
        idx = np.arange(a, e, dtype=np.int64)
        if kind == AUDIO_COND and r > 1:
            n = -(-(e - a) // r)
            g = np.full((n * r,), -1, dtype=np.int64)
            g[: e - a] = idx
            g = g.reshape(n, r)
            pos[a:e] = len(groups) + (idx - a) // r
        else:
            g = np.full((e - a, r), -1, dtype=np.int64)
            g[:, 0] = idx
            pos[a:e] = len(groups) + (idx - a)
        groups.extend(g)
    return (np.stack(groups) if groups else np.zeros((0, r), dtype=np.int64)), pos


def reduction_map(kinds: torch.Tensor, lengths: torch.Tensor, r: int) -> Reduction:
    B, T = kinds.shape
    k_np = kinds.cpu().numpy()
    rows = [reduce_row(k_np[b, : int(n)], r) for b, n in enumerate(lengths.tolist())]
    T2 = max(1, max(len(m) for m, _ in rows))
    members = np.full((B, T2, r), -1, dtype=np.int64)
    pos = np.full((B, T), -1, dtype=np.int64)
    for b, (m, p) in enumerate(rows):
        members[b, : len(m)], pos[b, : len(p)] = m, p
    members_t = torch.from_numpy(members).to(kinds.device)
    last = members_t.max(-1).values
    first = members_t[..., 0].clamp(min=0)
    red_kinds = torch.where(last >= 0, kinds.gather(1, first), torch.full_like(first, PAD).to(kinds.dtype))
    return Reduction(
        members=members_t, last=last, pos=torch.from_numpy(pos).to(kinds.device), kinds=red_kinds,
        lengths=torch.tensor([len(m) for m, _ in rows], dtype=torch.int64, device=kinds.device),
    )


class CondStacker(nn.Module):
    """Concatenate the embeddings of a group's rows and project back to ``dim`` (starts as a mean)."""

    def __init__(self, dim: int, r: int) -> None:
        super().__init__()
        self.r = r
        self.proj = nn.Linear(r * dim, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([torch.eye(dim) / r] * r, dim=1))

    def forward(self, x: torch.Tensor, red: Reduction) -> torch.Tensor:
        """``x [B, T', D]`` layout embeddings -> ``[B, T'', D]``."""
        B, T2, r = red.members.shape
        D = x.shape[-1]
        idx = red.members.clamp(min=0).view(B, T2 * r, 1).expand(-1, -1, D)
        g = x.gather(1, idx).view(B, T2, r, D) * (red.members >= 0).unsqueeze(-1).to(x.dtype)
        stacked = (red.members[..., 1:] >= 0).any(-1) | (red.kinds == AUDIO_COND)
        out = g[:, :, 0].clone()
        if bool(stacked.any()):
            sel = stacked.nonzero(as_tuple=True)
            out[sel] = self.proj(g[sel].reshape(-1, r * D)).to(out.dtype)
        return out


__all__ = ["Reduction", "reduction_map", "CondStacker", "reduce_row"]
