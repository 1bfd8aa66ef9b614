"""Token choice from logits: greedy, temperature, top-k, top-p (nucleus), min-p, repetition penalty.

All functions take ``logits [B, C]`` where disallowed columns are already ``-inf``.

Example:
    >>> ids = sample(logits, temperature=0.8, top_k=20, top_p=0.95, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

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


__all__ = ["sample", "filter_logits", "repetition_penalty"]
