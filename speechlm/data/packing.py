"""Sequence packing: several examples share one row, so short examples waste no padding.

Rows are filled first-fit-decreasing up to ``row_len`` positions. ``batch.meta`` tells the model
where each example starts, so attention and positions can be restarted per example::

    row 0:  [ex3 ex3 ex3 ex3 ex3][ex1 ex1 ex1][pad]     doc_ids   0 0 0 0 0 1 1 1 -1
                                                         positions 0 1 2 3 4 0 1 2  0

A model that ignores ``doc_ids`` would let examples attend to each other: turn packing on only
with a model that reads them (``SpeechLM`` supports it when its config says so).
"""
from __future__ import annotations

import numpy as np
import torch

from speechlm.data.batch import Batch
from speechlm.data.sequence import PAD, Example


def first_fit_decreasing(lengths: list[int], row_len: int) -> list[list[int]]:
    """Assign items to rows of capacity ``row_len`` (longest first, into the first row it fits)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for j in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        n = lengths[j]
        if n > row_len:
            raise ValueError(f"example of {n} positions does not fit a packed row of {row_len}")
        for r, f in enumerate(free):
            if n <= f:
                rows[r].append(j)
                free[r] -= n
                break
        else:
            rows.append([j])
            free.append(row_len - n)
    return rows


def pack_examples(examples: list[Example], row_len: int, pad_id: int = 0) -> Batch:
    """Pack ``examples`` into rows of at most ``row_len`` positions (``meta``: doc_ids, positions)."""
    if not examples:
        raise ValueError("cannot pack an empty list of examples")
    rows = first_fit_decreasing([len(e) for e in examples], row_len)
    T = max(sum(len(examples[j]) for j in row) for row in rows)
    B, S = len(rows), examples[0].tokens.shape[1]
    tokens = np.full((B, T, S), pad_id, dtype=np.int64)
    weight = np.zeros((B, T, S), dtype=np.float32)
    kinds = np.full((B, T), PAD, dtype=np.int8)
    doc_ids = np.full((B, T), -1, dtype=np.int64)
    positions = np.zeros((B, T), dtype=np.int64)
    lengths, ids, tasks = [], [], []
    for b, row in enumerate(rows):
        t = 0
        for k, j in enumerate(row):
            e = examples[j]
            n = len(e)
            tokens[b, t:t + n], weight[b, t:t + n], kinds[b, t:t + n] = e.tokens, e.loss_weight, e.kinds
            doc_ids[b, t:t + n] = k
            positions[b, t:t + n] = np.arange(n)
            t += n
        lengths.append(t)
        ids.append("+".join(examples[j].id for j in row))
        tasks.append(examples[row[0]].task)
    return Batch(
        ids=ids, tasks=tasks, tokens=torch.from_numpy(tokens), loss_weight=torch.from_numpy(weight),
        kinds=torch.from_numpy(kinds), lengths=torch.tensor(lengths, dtype=torch.int64),
        prefix_lens=torch.zeros(B, dtype=torch.int64),
        meta={"doc_ids": torch.from_numpy(doc_ids), "positions": torch.from_numpy(positions),
              "packed": True},
    )


__all__ = ["pack_examples", "first_fit_decreasing"]
