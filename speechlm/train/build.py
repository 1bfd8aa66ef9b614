"""Building the parts of a run: model (fresh, from a packed dir, or over an HF causal LM),
data, precision, optimizer. Kept apart from the trainer so each piece is testable alone."""
from __future__ import annotations

import logging

import torch
from torch import nn

from speechlm.train.config import TrainConfig

log = logging.getLogger(__name__)


def apply_init_source(model_config, init_from: str | None):
    """An HF causal LM dir given as ``--init-from`` becomes the model's ``hf`` backbone."""
    from speechlm.models.model_dir import is_hf_dir, is_model_dir

    if init_from and is_hf_dir(init_from):
        if model_config.backbone != "hf" or model_config.hf_path != str(init_from):
            log.info("--init-from %s is a Hugging Face causal LM: using it as the hf backbone", init_from)
        model_config.backbone, model_config.hf_path = "hf", str(init_from)
    elif init_from and not is_model_dir(init_from):
        raise FileNotFoundError(
            f"--init-from {init_from}: neither a speechlm model dir (config.json of model_type speechlm, or the "
            f"config.yaml of older versions, + model.safetensors) nor a Hugging Face causal LM dir (config.json)")
    return model_config


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and 1-d parameters."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel is ~7x faster than the default per-tensor loop on CPU too (5M params: 46 -> 6 ms)
    devices = {p.device.type for p in decay + no_decay}
    fused = {"fused": True} if decay and len(devices) == 1 and devices <= {"cpu", "cuda"} else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **fused)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each backbone layer in the backward pass (the train config's
    ``activation_checkpointing``), with either backbone."""
    if getattr(model, "guided_attn", None) is not None:
        raise ValueError("train config activation_checkpointing does not work with model.guided_attn_weight > 0 "
                         "(the recomputed layer would not record its attention); turn one of them off")
    model.backbone.set_activation_checkpointing(True)
    log.info("activation checkpointing on in the %s backbone", type(model.backbone).__name__)


def segment_rows_fn(model: nn.Module):
    """Rows a segment takes in the model's layout (for batching budgets and the context check):
    ``rows(kind, frames, n_streams)``, the stream strategy's :meth:`Pattern.segment_rows` (one row
    per frame for a model without one). Condition reduction is ignored (an upper bound).
    """
    pattern = getattr(model, "pattern", None)

    def rows(kind: int, frames, n_streams: int):
        return frames if pattern is None else pattern.segment_rows(kind, frames, n_streams)

    return rows


def model_context(model: nn.Module) -> int | None:
    """The longest sequence (in rows) the model accepts: ``max_len`` of the built-in backbone,
    ``max_position_embeddings`` of an HF one; None if it states no limit."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "backbone", "builtin") != "builtin":
        hf = getattr(getattr(model, "backbone", None), "config", None)
        return getattr(hf, "max_position_embeddings", None)
    return getattr(cfg, "max_len", None)


__all__ = ["apply_init_source", "make_optimizer",
           "enable_activation_checkpointing", "model_context", "segment_rows_fn"]
