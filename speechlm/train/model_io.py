"""Model weights in checkpoints, from the full state dict any strategy gathers.

A checkpoint dir is a model dir (``config.yaml``, ``model.safetensors``, ``token_list.json``,
``hf_backbone/``) in the format of :mod:`speechlm.models.checkpoint`, so ``SpeechLM.from_pretrained``
and ``--init-from`` take it directly. Under FSDP the parameters are sharded, so the weights are
written from the gathered state dict rather than from the module.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from torch import nn

from speechlm.config import to_dict
from speechlm.models.checkpoint import CONFIG, HF_DIR, VOCAB, WEIGHTS, check_state
from speechlm.utils.fileio import write_text


def aliases(model: nn.Module) -> dict[str, str]:
    """Tied parameter names -> the first name of the same tensor (e.g. head.weight -> embed...)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def write_model_dir(model: nn.Module, full_state: dict[str, torch.Tensor], out_dir: str | os.PathLike) -> None:
    """Write the model dir of ``model`` with the weights of ``full_state`` (tied copies left out)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tied = aliases(model)
    weights = {k: v.detach().cpu().contiguous() for k, v in full_state.items() if k not in tied}
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", "speechlm": "1"})
    write_text(out / CONFIG, yaml.safe_dump(to_dict(model.config), sort_keys=False))
    model.vocab.save(out / VOCAB)
    if hasattr(model.backbone, "save_config"):
        model.backbone.save_config(out / HF_DIR)


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full state dict of the model dir ``path`` (tied copies filled in), checked against
    ``model`` (missing / unexpected keys and shapes are errors naming them)."""
    from speechlm.models.checkpoint import read_safetensors

    state = read_safetensors(Path(path) / WEIGHTS)
    tied = aliases(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in tied}
    check_state(expected, state, str(Path(path) / WEIGHTS))
    for name, src in tied.items():
        state[name] = state[src]
    return state


__all__ = ["write_model_dir", "load_model_weights", "aliases"]
