"""Attention-based stopping for TTS: the end of a generated audio segment follows the model's
alignment head (the head trained with ``ModelConfig.guided_attn_weight`` to read the text in order).

At every generated frame, the head's attention over the text-condition keys has a focus (its
most attended text position, as a share of the text: 0 = first token, 1 = last). A row may end
only once the focus has reached ``threshold`` of the text (no early stops with half the text
unsaid), and it is ended when the focus jumps back by more than ``JUMP_BACK`` after that (the
text is finished and the model has started over: small models babble on instead of stopping).
Measured on the mini recipe: see ``egs/mini_espeak/speechlm1/README.md``.
"""
from __future__ import annotations

import torch

#: A fall of the focus this large, after the threshold was reached, ends the row.
JUMP_BACK = 0.25


class AttnStop:
    """Focus tracking of every decoding row over its text-condition keys."""

    def __init__(self, text_keys: torch.Tensor, threshold: float) -> None:
        self.threshold = threshold
        self.n = text_keys.sum(1)  # text keys per row (0: the row is never held or ended)
        self.reach = torch.zeros(len(self.n), device=text_keys.device)
        self.focus = torch.zeros_like(self.reach)

    def update(self, probs: torch.Tensor, text_keys: torch.Tensor) -> None:
        """Read the new frame's attention ``probs [B, 1, Tk]`` over the keys (``text_keys [B, Tk]``)."""
        p = probs[:, -1].masked_fill(~text_keys, -1.0)
        rank = text_keys.long().cumsum(1) - 1  # index of each key within its row's text
        best = rank.gather(1, p.argmax(1, keepdim=True))[:, 0].float()
        self.focus = best / (self.n - 1).clamp(min=1)
        self.reach = torch.maximum(self.reach, self.focus)

    def ready(self) -> list[bool]:
        """Per row: may the end token come now?"""
        return ((self.reach >= self.threshold) | (self.n == 0)).tolist()

    def jumped_back(self) -> list[bool]:
        """Per row: has the focus fallen back after finishing the text (end it now)?"""
        return ((self.reach >= self.threshold) & (self.focus < self.reach - JUMP_BACK) & (self.n > 0)).tolist()

    def select(self, rows: torch.Tensor) -> None:
        self.n, self.reach, self.focus = self.n[rows], self.reach[rows], self.focus[rows]


__all__ = ["AttnStop", "JUMP_BACK"]
