"""The batch the model consumes, and the collate function that pads examples into it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from speechlm.data.sequence import PAD, Example


@dataclass
class Batch:
    """Right-padded examples.

    tokens:       int64 ``[B, T, S]`` global ids (``pad_id`` where empty)
    loss_weight:  float32 ``[B, T, S]`` weight of predicting ``tokens[b, t, s]`` (0 = no loss)
    kinds:        int8 ``[B, T]`` position kinds from :mod:`speechlm.data.sequence` (PAD after the end)
    lengths:      int64 ``[B]``
    prefix_lens:  int64 ``[B]`` positions with bidirectional attention (prefix LM), 0 if causal
    """

    ids: list[str]
    tasks: list[str]
    tokens: torch.Tensor
    loss_weight: torch.Tensor
    kinds: torch.Tensor
    lengths: torch.Tensor
    prefix_lens: torch.Tensor
    meta: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.ids, self.tasks, self.tokens.to(device), self.loss_weight.to(device),
            self.kinds.to(device), self.lengths.to(device), self.prefix_lens.to(device), self.meta,
        )


def collate(examples: list[Example], pad_id: int = 0) -> Batch:
    """Pad ``examples`` on the right into a :class:`Batch`."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    B = len(examples)
    T = max(len(e) for e in examples)
    S = examples[0].tokens.shape[1]
    tokens = np.full((B, T, S), pad_id, dtype=np.int64)
    weight = np.zeros((B, T, S), dtype=np.float32)
    kinds = np.full((B, T), PAD, dtype=np.int8)
    for b, e in enumerate(examples):
        n = len(e)
        tokens[b, :n], weight[b, :n], kinds[b, :n] = e.tokens, e.loss_weight, e.kinds
    return Batch(
        ids=[e.id for e in examples],
        tasks=[e.task for e in examples],
        tokens=torch.from_numpy(tokens),
        loss_weight=torch.from_numpy(weight),
        kinds=torch.from_numpy(kinds),
        lengths=torch.tensor([len(e) for e in examples], dtype=torch.int64),
        prefix_lens=torch.tensor([e.prefix_len for e in examples], dtype=torch.int64),
    )
