"""Refit a trained model's length head on its frozen features.

During training the length head chases hidden states that keep changing under it; fitted again
on the final model's features it predicts lengths about twice as well (mini recipe, dev: mean
absolute log error 0.14 -> 0.07). ``speechlm pack`` runs this for models with a length head.

Example:
    >>> report = refit_length_head(model, [DataSpec.parse("tts:mini:dump/train/tts")], steps=1500)
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from speechlm.data.batch import collate
from speechlm.data.dataset import DataSpec, TaskData
from speechlm.models.losses import length_inputs

log = logging.getLogger(__name__)


@torch.no_grad()
def length_data(model, specs: list[DataSpec], max_examples: int, batch_size: int = 16,
                seed: int = 0, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets of up to ``max_examples`` examples per data entry (a seeded sample),
    computed in ``precision`` (the run's training precision)."""
    model.eval()
    dev = next(model.parameters()).device
    feats, targets = [], []
    for spec in specs:
        data = TaskData(spec, model.vocab, model.n_streams, seed=seed)
        idx = np.arange(len(data))
        if len(idx) > max_examples:
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_examples, replace=False))
        for i in tqdm(range(0, len(idx), batch_size), desc=f"length features {spec.key}", disable=None):
            batch = collate([data.example(int(j)) for j in idx[i : i + batch_size]], model.vocab.pad_id).to(dev)
            with model.autocast(dev, precision):
                h, prep = model.hidden_states(batch)
            f, y, ok = length_inputs(prep, h, batch.kinds)
            feats.append(f[ok].float())
            targets.append(y[ok])
    if not feats:
        raise ValueError("length refit: no training examples")
    return torch.cat(feats), torch.cat(targets)


def refit_length_head(model, specs: list[DataSpec], steps: int = 1500, max_examples: int = 1500,
                      lr: float = 1e-3, seed: int = 0, precision: str = "fp32") -> dict:
    """Fit ``model.length_head`` (only) to the frozen features of ``specs``' examples; returns the
    mean absolute error of the log length ratio before and after, on those examples."""
    if model.length_head is None:
        raise ValueError("length refit: the model has no length head (model.length_weight is 0)")
    x, y = length_data(model, specs, max_examples, seed=seed, precision=precision)
    head = model.length_head
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float((head(x)[:, 0] - y).abs().mean())
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=gen).to(x.device)
        loss = (head(x[i])[:, 0] - y[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        after = float((head(x)[:, 0] - y).abs().mean())
    log.info("length head refit on %d examples: mean |log ratio error| %.3f -> %.3f", len(x), before, after)
    return {"examples": len(x), "error_before": before, "error_after": after}


__all__ = ["refit_length_head", "length_data"]
