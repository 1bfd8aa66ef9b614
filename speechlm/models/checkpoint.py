"""Model directories: ``config.yaml``, ``model.safetensors``, ``token_list.json`` (+ ``hf_backbone/``).

Loading is strict: missing or unexpected weights, and shape mismatches, are errors that name the
keys. Files are written under temporary names and renamed when complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from speechlm.config import load_config, to_dict
from speechlm.models.config import ModelConfig
from speechlm.vocab import Vocabulary

CONFIG, WEIGHTS, VOCAB, HF_DIR = "config.yaml", "model.safetensors", "token_list.json", "hf_backbone"


class WeightsFileError(ValueError):
    """A weights file is not a readable safetensors file; the message names it."""


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with errors that name the file and say what it seems to be."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        with open(path, "rb") as f:
            head = f.read(8)
        kind = ("a PyTorch zip/pickle file (torch.save), not safetensors" if head[:2] == b"PK"
                or head[:1] == b"\x80" else "damaged or truncated, or not a safetensors file")
        raise WeightsFileError(
            f"{path}: cannot read the weights ({type(e).__name__}: {e}); the file looks {kind}. "
            f"Re-save the model (save_pretrained / speechlm pack) or resume from another checkpoint"
        ) from None


def _tied_keys(model) -> set[str]:
    return {"head.weight"} if model.config.tie_embeddings else set()


def model_state(model) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates, contiguous (what ``model.safetensors`` holds)."""
    tied = _tied_keys(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}


def save_model(model, out_dir: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS + ".tmp")
    save_file(model_state(model), str(tmp), metadata={"format": "pt", "speechlm": "1"})
    os.replace(tmp, out / WEIGHTS)
    cfg_tmp = out / (CONFIG + ".tmp")
    cfg_tmp.write_text(yaml.safe_dump(to_dict(model.config), sort_keys=False), encoding="utf-8")
    os.replace(cfg_tmp, out / CONFIG)
    voc_tmp = out / (VOCAB + ".tmp")
    model.vocab.save(voc_tmp)
    os.replace(voc_tmp, out / VOCAB)
    if hasattr(model.backbone, "save_config"):
        model.backbone.save_config(out / HF_DIR)


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise naming missing / unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(found)) if found[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:10])}")
        raise KeyError(f"{where} does not match the model built from its config.yaml: " + "; ".join(parts))


#: parameters with one row per vocabulary id (grown when the vocabulary is extended)
VOCAB_ROWS = ("embed.emb.weight", "head.weight")


def check_extension(old: Vocabulary, new: Vocabulary, where: str) -> None:
    """``new`` must start with every token of ``old`` at the same id (vocabularies only grow)."""
    n = len(old)
    if len(new) < n or new.tokens[:n] != old.tokens:
        bad = next((i for i in range(min(n, len(new))) if new.tokens[i] != old.tokens[i]), min(n, len(new)))
        got = new.tokens[bad] if bad < len(new) else "nothing"
        raise ValueError(
            f"{where}: the new vocabulary does not extend the model's: id {bad} is "
            f"{old.tokens[bad] if bad < n else 'nothing'!r} in the model and {got!r} in the new one "
            f"(build it with `speechlm vocab --extend {where}`)"
        )


def load_model(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", vocab: Vocabulary | None = None):
    """Load a model directory strictly; with ``vocab`` (an extension of the saved vocabulary) the
    embedding/head rows of existing ids are kept and new ids get fresh rows."""
    path = Path(path)
    for name in (CONFIG, WEIGHTS, VOCAB):
        if not (path / name).is_file():
            raise FileNotFoundError(f"model directory {path} has no {name} (save it with save_pretrained)")
    config = load_config(ModelConfig, path / CONFIG)
    saved_vocab = Vocabulary.load(path / VOCAB)
    grow = vocab is not None and vocab.tokens != saved_vocab.tokens
    if grow:
        check_extension(saved_vocab, vocab, str(path / VOCAB))
    vocab = vocab if grow else saved_vocab
    backbone_dir = str(path / HF_DIR) if config.backbone != "builtin" else None
    if backbone_dir is not None and not (path / HF_DIR / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no {HF_DIR}/config.json for its {config.backbone} backbone")
    model = cls(config, vocab, _backbone_dir=backbone_dir) if backbone_dir else cls(config, vocab)
    state = read_safetensors(path / WEIGHTS, map_location)
    expected = model_state(model)
    if grow:
        n = len(saved_vocab)
        for key in VOCAB_ROWS:
            if key in state and key in expected and state[key].shape[0] == n:
                rows = expected[key].clone().to(state[key].device)
                rows[:n] = state[key]
                state[key] = rows
    check_state(expected, state, str(path / WEIGHTS))
    model.load_state_dict(state, strict=False)
    return model.to(map_location)


__all__ = ["save_model", "load_model", "check_state", "check_extension", "model_state", "read_safetensors",
           "WeightsFileError"]
