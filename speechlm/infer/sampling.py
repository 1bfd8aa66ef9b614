"""Token choice from logits: greedy, temperature, top-k, top-p (nucleus), min-p, repetition penalty,
and the expected value / median of ordinal fields (quantizer indices).

All functions take ``logits [B, C]`` where disallowed columns are already ``-inf``.

Example:
    >>> ids = sample(logits, temperature=0.8, top_k=20, top_p=0.95, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on columns already emitted in the row (``seen [B, C]`` bool): positive
    logits are divided by ``penalty``, negative ones multiplied."""
    if penalty == 1.0:
        return logits
    pen = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pen, logits)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set columns outside top-k / the top-p nucleus / below ``min_p * max prob`` to ``-inf``."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)
    return logits


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One column per row: argmax when ``temperature == 0``, else a draw from the filtered softmax."""
    logits = logits.float()
    if temperature <= 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits / temperature, top_k, top_p, min_p)
    probs = logits.softmax(-1)
    if generator is not None and generator.device != probs.device:
        u = torch.rand(probs.shape[0], 1, generator=generator).to(probs.device)
    else:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    # inverse-CDF draw: reproducible with an explicit generator on any device
    idx = (probs.cumsum(-1) < u * probs.sum(-1, keepdim=True)).sum(-1)
    idx = idx.clamp(max=probs.shape[-1] - 1)
    bad = ~torch.isfinite(logits.gather(1, idx[:, None]))[:, 0]  # rounding at the tail
    if bool(bad.any()):
        idx = torch.where(bad, logits.argmax(-1), idx)
    return idx


def ordinal_estimate(probs: torch.Tensor, bits: Sequence[int], how: str = "median") -> torch.Tensor:
    """Tokens ``[R]`` from ``probs [R, 2 ** sum(bits)]`` over a stream's values in order, whose token
    packs ordinal fields of ``bits`` bits (first field in the high bits, e.g. codec2's LSP pairs
    5 + 5): each field's median (``how="median"``) or rounded expected value (``"mean"``) under
    its marginal, packed back into one token. Unlike a draw or the argmax, a field whose
    probability is spread over neighbouring levels gets their middle, not one of its tails."""
    if how not in ("mean", "median"):
        raise ValueError(f"ordinal_estimate: how must be 'mean' or 'median', got {how!r}")
    sizes = [1 << int(b) for b in bits]
    if probs.shape[-1] != (total := 1 << sum(int(b) for b in bits)):
        raise ValueError(f"ordinal_estimate: {probs.shape[-1]} values, but fields of {list(bits)} bits make {total}")
    p = probs.float()
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    grid = p.reshape(-1, *sizes)
    out = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
    for i, n in enumerate(sizes):
        others = [d + 1 for d in range(len(sizes)) if d != i]
        m = grid.sum(others) if others else grid  # [R, n]: the field's marginal
        if how == "mean":
            v = (m * torch.arange(n, device=m.device, dtype=m.dtype)).sum(-1).round().long()
        else:  # the first level whose cumulative probability reaches one half
            v = (m.cumsum(-1) < 0.5).sum(-1)
        out = out * n + v.clamp(0, n - 1)
    return out


__all__ = ["sample", "filter_logits", "repetition_penalty", "ordinal_estimate"]
