"""Alignment-aware stopping for TTS: the end token is allowed only once the model's alignment CTC
head (``ModelConfig.align_ctc_weight``) says the whole text has been spoken.

Each generated audio frame's hidden state gives CTC posteriors over the text-condition tokens
(phones). A CTC forward pass over the prompt's phone sequence, one frame at a time, tracks where
in the text the generation is: ``alpha[s]`` over the ``2L + 1`` CTC states (blank, phone 1,
blank, ..., phone L, blank). The row may end when the filtered probability of being in the last
phone or the final blank reaches ``threshold``. Outputs that stop early (phones skipped) or babble
on past the text are what small TTS models produce without alignment; this ties the length to
the content the model itself recognizes in its output.
"""
from __future__ import annotations

import torch

from speechlm.data.batch import Batch
from speechlm.data.sequence import TEXT_COND

NEG = -1e30


class AlignStop:
    """CTC forward variables of every decoding row (rows without text conditions are always ready)."""

    def __init__(self, model, prompts: Batch, threshold: float) -> None:
        a, b = model.align_ctc_range
        self.head, self.threshold = model.align_ctc_head, threshold
        toks, kinds = prompts.tokens[..., 0], prompts.kinds
        labels = []
        for r in range(toks.shape[0]):
            t = toks[r][(kinds[r] == TEXT_COND) & (toks[r] >= a) & (toks[r] < b)] - a + 1  # 0 = blank
            labels.append(t)
        B, L = len(labels), max([len(t) for t in labels] + [1])
        dev = toks.device
        ext = torch.zeros(B, 2 * L + 1, dtype=torch.long, device=dev)  # blank, l1, blank, l2, ...
        n = torch.tensor([len(t) for t in labels], device=dev)
        for r, t in enumerate(labels):
            ext[r, 1: 2 * len(t): 2] = t
        s = torch.arange(2 * L + 1, device=dev)
        valid = s[None] <= 2 * n[:, None]
        # a skip s-2 -> s is allowed into a phone that differs from the phone two states back
        prev2 = torch.cat([torch.full((B, 2), -1, dtype=torch.long, device=dev), ext[:, :-2]], 1)
        self.skip = (s[None] % 2 == 1) & (ext != prev2) & (s[None] >= 2)
        self.ext, self.valid, self.n = ext, valid, n
        self.last = torch.stack([2 * n - 1, 2 * n], 1).clamp(min=0)  # last phone, final blank
        self.alpha: torch.Tensor | None = None
        self.rows = torch.arange(B, device=dev)  # which original rows are still decoding

    def update(self, h: torch.Tensor) -> None:
        """Advance every active row by one generated frame with hidden states ``h [B_active, D]``."""
        ext, valid = self.ext[self.rows], self.valid[self.rows]
        logp = self.head(h.reshape(len(self.rows), -1, h.shape[-1])[:, -1].float()).float().log_softmax(-1).gather(1, ext)
        logp = logp.masked_fill(~valid, NEG)
        if self.alpha is None:
            alpha = torch.full_like(logp, NEG)
            alpha[:, :2] = logp[:, :2]
        else:
            a = self.alpha
            shift1 = torch.cat([torch.full_like(a[:, :1], NEG), a[:, :-1]], 1)
            shift2 = torch.cat([torch.full_like(a[:, :2], NEG), a[:, :-2]], 1)
            shift2 = shift2.masked_fill(~self.skip[self.rows], NEG)
            alpha = torch.logsumexp(torch.stack([a, shift1, shift2]), 0) + logp
        self.alpha = alpha - alpha.logsumexp(1, keepdim=True)  # filtered posterior over the states

    def ready(self) -> list[bool]:
        """Per active row: may it end now?"""
        if self.alpha is None:
            return [bool(v) for v in (self.n[self.rows] == 0).tolist()]
        p_end = self.alpha.gather(1, self.last[self.rows]).logsumexp(1).exp()
        return [bool(v) for v in ((p_end >= self.threshold) | (self.n[self.rows] == 0)).tolist()]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the active rows at positions ``keep`` (rows that finished leave)."""
        self.rows = self.rows[keep]
        if self.alpha is not None:
            self.alpha = self.alpha[keep]


__all__ = ["AlignStop"]
