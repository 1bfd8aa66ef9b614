"""The model directory: one format for training checkpoints, packed and exported models.

Following Hugging Face's ``save_pretrained`` layout::

    config.json          the ModelConfig, plus "model_type": "speechlm" and "format_version"
    model.safetensors    the weights (tied copies left out), metadata: format, model_type, version
    token_list.json      the vocabulary (ids never move; see speechlm/vocab.py)
    llama_config.json    built-in backbone: its transformer body as a transformers LlamaConfig
    hf_backbone/         hf backbone: the causal LM's config.json (the body is rebuilt from it)
    tokenizers.yaml + tokenizers/, tasks/, decode.yaml, README.md    added by `speechlm pack`

Every writer and loader goes through this module: the trainer's checkpoints (:func:`write_model`,
:func:`read_weights`), ``SpeechLM.save_pretrained`` / ``from_pretrained`` (:func:`load_model`),
``--init-from`` fine-tuning (:func:`init_weights`), ``speechlm pack`` (:func:`copy_model`).
Directories written before ``config.json`` (``config.yaml``, format 1) are read through one
conversion path, :func:`read_config`, and upgraded when packed (:func:`copy_model`).

Loading is strict: missing or unexpected weights and shape mismatches are errors naming the keys.
Vocabulary growth is handled in one place (:func:`fill_weights`): rows of ids the saved model
has are copied (by token when ids moved), new ids keep their fresh rows.

The weights of the built-in backbone map one-to-one onto transformers' ``LlamaModel`` (names
``backbone.layers.*`` / ``backbone.norm.weight`` without the ``backbone.`` prefix); the input
embedding does not (ours sums one row per stream), so ``LlamaModel`` takes ``inputs_embeds``. Its
hidden states then equal our backbone's under causal attention (tests/test_model_dir.py); a
``prefix_lm`` model also attends both ways among its condition rows, a mask LlamaModel does not build.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from speechlm.config import ConfigError, from_dict, load_yaml, to_dict
from speechlm.models.config import ModelConfig
from speechlm.utils.fileio import write_json
from speechlm.vocab import Vocabulary

log = logging.getLogger(__name__)

MODEL_TYPE = "speechlm"
#: 1: config.yaml dirs (before issue 15); 2: config.json with model_type and format_version
FORMAT_VERSION = 2
CONFIG, LEGACY_CONFIG, WEIGHTS, VOCAB = "config.json", "config.yaml", "model.safetensors", "token_list.json"
HF_DIR, LLAMA_CONFIG = "hf_backbone", "llama_config.json"
#: files and dirs of the model part (what a training checkpoint holds besides the trainer state)
MODEL_FILES = (CONFIG, WEIGHTS, VOCAB, LLAMA_CONFIG, HF_DIR)
#: parameters with one row per vocabulary id (grown or remapped with the vocabulary)
VOCAB_ROWS = ("embed.emb.weight", "head.weight")


class WeightsFileError(ValueError):
    """A weights file is not a readable safetensors file; the message names it."""


# ---- what a directory is ---------------------------------------------------------------------
def _json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _model_type(path: Path) -> str | None:
    """``model_type`` of ``path/config.json`` ("" when it has none or cannot be read; None: no file)."""
    if not (path / CONFIG).is_file():
        return None
    try:
        return str(_json(path / CONFIG).get("model_type") or "")
    except ConfigError:
        return ""


def is_model_dir(path: str | os.PathLike) -> bool:
    """A speechlm model dir: ``config.json`` of ``model_type`` speechlm, or a format-1 dir
    (``config.yaml``), with ``model.safetensors``."""
    p = Path(path)
    kind = _model_type(p)
    return (p / WEIGHTS).is_file() and (kind == MODEL_TYPE or (kind is None and (p / LEGACY_CONFIG).is_file()))


def is_hf_dir(path: str | os.PathLike) -> bool:
    """A Hugging Face model dir (``config.json`` of another ``model_type``)."""
    return _model_type(Path(path)) not in (None, MODEL_TYPE)


def _missing(path: Path) -> str | None:
    if not path.is_dir():
        return f"model directory {path} does not exist"
    if not ((path / CONFIG).is_file() or (path / LEGACY_CONFIG).is_file()):
        return f"model directory {path} has no {CONFIG}"
    for name in (WEIGHTS, VOCAB):
        if not (path / name).is_file():
            return f"model directory {path} has no {name}"
    return None


def check_model_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path; FileNotFoundError naming the first missing file otherwise."""
    path = Path(path)
    problem = _missing(path)
    if problem:
        raise FileNotFoundError(f"{problem} (write one with save_pretrained or `speechlm pack`)")
    return path


# ---- config ----------------------------------------------------------------------------------
def config_dict(config: ModelConfig) -> dict:
    """What ``config.json`` holds: the model config with its type and format version."""
    from speechlm import __version__

    return {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, "speechlm_version": __version__,
            **to_dict(config)}


def _legacy_config(path: Path) -> dict:
    """A format-1 ``config.yaml`` as a format-2 dict (the one conversion of old directories)."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping for ModelConfig, got {type(data).__name__}")
    return {"model_type": MODEL_TYPE, "format_version": 1, **data}


def read_config_dict(path: str | os.PathLike) -> dict:
    """``config.json`` of model dir ``path`` (a format-1 ``config.yaml`` converted)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        data = _json(path / CONFIG)
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"{path / CONFIG}: model_type is {data.get('model_type')!r}, not {MODEL_TYPE!r} "
                              f"(a Hugging Face model dir is an hf backbone: --init-from it or set model.hf_path)")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ConfigError(f"{path / CONFIG}: format_version {data['format_version']} is newer than this "
                              f"speechlm reads ({FORMAT_VERSION}); upgrade speechlm")
        return data
    if (path / LEGACY_CONFIG).is_file():
        return _legacy_config(path / LEGACY_CONFIG)
    raise FileNotFoundError(f"model directory {path} has no {CONFIG} (nor the {LEGACY_CONFIG} of older versions)")


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of model dir ``path``; unknown keys are errors naming the file (keys of
    older versions are upgraded by ``ModelConfig.upgrade_keys`` and ``drop_inapplicable``)."""
    data = dict(read_config_dict(path))
    for key in ("model_type", "format_version", "speechlm_version"):
        data.pop(key, None)
    where = str(Path(path) / (CONFIG if (Path(path) / CONFIG).is_file() else LEGACY_CONFIG))
    from speechlm.models.config import drop_inapplicable  # older versions wrote every strategy's keys

    return from_dict(ModelConfig, drop_inapplicable(data, where), where=where)


def llama_config(config: ModelConfig, vocab: Vocabulary) -> dict:
    """The built-in backbone's transformer body as ``transformers.LlamaConfig`` keys
    (``LlamaConfig.from_json_file(dir / "llama_config.json")``)."""
    from speechlm.models.builtin import default_ffn_dim

    return {
        "model_type": "llama", "architectures": ["LlamaModel"],
        "hidden_size": config.dim, "intermediate_size": config.ffn_dim or default_ffn_dim(config.dim),
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads or config.n_heads, "head_dim": config.dim // config.n_heads,
        "hidden_act": "silu", "max_position_embeddings": config.max_len, "rms_norm_eps": config.norm_eps,
        # transformers >= 5 reads rope_parameters, older versions rope_theta
        "rope_theta": config.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": config.dropout,
        "initializer_range": config.init_std, "tie_word_embeddings": False, "vocab_size": len(vocab),
        "pad_token_id": vocab.pad_id, "eos_token_id": vocab.eos_id, "bos_token_id": None,
    }


# ---- weights ---------------------------------------------------------------------------------
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


def write_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.safetensors`` (contiguous CPU tensors, with metadata), written atomically."""
    from safetensors.torch import save_file

    from speechlm import __version__

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"format": "pt", "model_type": MODEL_TYPE, "format_version": str(FORMAT_VERSION),
            "speechlm_version": __version__}
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


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


def write_model(model: nn.Module, out_dir: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The model part of a model dir: config, weights (``state``, e.g. gathered under FSDP;
    default the model's own), vocabulary and the backbone description."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tied = aliases(model)
    state = model.state_dict() if state is None else state
    write_weights({k: v for k, v in state.items() if k not in tied}, out / WEIGHTS)
    write_json(out / CONFIG, config_dict(model.config))
    model.vocab.save(out / VOCAB)
    if model.config.backbone == "builtin":
        write_json(out / LLAMA_CONFIG, llama_config(model.config, model.vocab))
    if hasattr(model.backbone, "save_config"):
        model.backbone.save_config(out / HF_DIR)
    return out


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str,
                shapes: bool = True) -> None:
    """Raise KeyError naming missing / unexpected keys (and shape mismatches if ``shapes``)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
           for k in sorted(set(expected) & set(found)) if shapes and found[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        if bad:
            parts.append(f"shape mismatches: {'; '.join(bad[:10])}")
        raise KeyError(f"{where} does not match the model built from its config (is it the same architecture?): "
                       + "; ".join(parts))


def read_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full state dict of model dir ``path`` (tied copies filled in), checked strictly against
    ``model`` (resuming a checkpoint: same vocabulary, same shapes)."""
    state = read_safetensors(Path(path) / WEIGHTS)
    tied = aliases(model)
    check_state({k: v for k, v in model.state_dict().items() if k not in tied}, state, str(Path(path) / WEIGHTS))
    for name, src in tied.items():
        state[name] = state[src]
    return state


# ---- vocabulary growth -------------------------------------------------------------------------
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


def vocab_id_map(old: Vocabulary, new: Vocabulary) -> torch.Tensor | None:
    """For each id of ``new``, the id of the same token in ``old`` (-1: a token ``old`` lacks);
    None when ``new`` keeps every id of ``old`` (equal, or extended by appending)."""
    n = len(old.tokens)
    if new.tokens[:n] == old.tokens:
        return None
    index = {t: i for i, t in enumerate(old.tokens)}
    return torch.tensor([index.get(t, -1) for t in new.tokens], dtype=torch.int64)


def _first_difference(old: Vocabulary, new: Vocabulary) -> str:
    i = next((i for i, (a, b) in enumerate(zip(old.tokens, new.tokens)) if a != b), min(len(old), len(new)))
    a = old.tokens[i] if i < len(old) else "nothing"
    b = new.tokens[i] if i < len(new) else "nothing"
    return f"id {i} is {a!r} in the model and {b!r} in the new vocabulary"


@torch.no_grad()
def fill_weights(model: nn.Module, src: dict[str, torch.Tensor], saved_vocab: Vocabulary | None, where: str) -> int:
    """Copy ``src`` (the weights of a model dir with vocabulary ``saved_vocab``) into ``model``.

    Tensors must match by name. When ``model.vocab`` extends the saved one (ids only appended),
    the embedding/head rows of the old ids are copied and new ids keep their fresh rows; when ids
    moved, each row is copied from the old id of its token. Returns how many tensors grew.
    """
    tied = aliases(model)
    dst = {k: v for k, v in model.state_dict().items() if k not in tied}
    check_state(dst, src, where, shapes=False)
    id_map = vocab_id_map(saved_vocab, model.vocab) if saved_vocab is not None else None
    if id_map is not None:
        # every tensor with one row per old id must be one we know how to remap
        rows = [k for k, v in src.items() if v.dim() >= 1 and v.shape[0] == len(saved_vocab)]
        unknown = [k for k in rows if k not in VOCAB_ROWS]
        if unknown:
            raise ValueError(f"{where}: the token ids differ ({_first_difference(saved_vocab, model.vocab)}) and "
                             f"tensor {unknown[0]} has one row per id, which cannot be remapped; build the "
                             f"vocabulary with `speechlm vocab --extend` of the model's {VOCAB}")
    grown, remapped = [], []
    for k, v in src.items():
        t = dst[k]
        if id_map is not None and k in VOCAB_ROWS and v.shape[0] == len(saved_vocab) and t.shape[1:] == v.shape[1:]:
            keep = id_map >= 0
            t[keep] = v[id_map[keep]].to(t.device, t.dtype)  # rows of new tokens stay freshly initialized
            remapped.append(k)
        elif t.shape == v.shape:
            t.copy_(v)
        elif id_map is None and t.dim() == v.dim() and t.shape[1:] == v.shape[1:] and t.shape[0] > v.shape[0]:
            t[: v.shape[0]].copy_(v)
            grown.append(k)
        else:
            raise ValueError(f"{where}: tensor {k} has shape {tuple(v.shape)}, the model needs {tuple(t.shape)} "
                             f"(is the model config the same architecture?)")
    if remapped:
        moved = int(((id_map >= 0) & (id_map != torch.arange(len(id_map)))).sum())
        new = int((id_map < 0).sum())
        dropped = len(saved_vocab) - int((id_map >= 0).sum())
        log.warning("the vocabulary orders tokens differently from %s (%s): remapped the rows of %s by token "
                    "(%d ids moved, %d new tokens with fresh rows, %d tokens of the model not in the vocabulary)",
                    where, _first_difference(saved_vocab, model.vocab), ", ".join(remapped), moved, new, dropped)
    return len(grown)


# ---- loading -----------------------------------------------------------------------------------
def load_model(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
               vocab: Vocabulary | None = None):
    """Build ``cls`` from model dir ``path`` and load its weights strictly. ``vocab``: an
    extension of the saved vocabulary (old ids keep their rows, new ids get fresh ones)."""
    path = check_model_dir(path)
    config = read_config(path)
    saved_vocab = Vocabulary.load(path / VOCAB)
    if vocab is not None and vocab.tokens != saved_vocab.tokens:
        check_extension(saved_vocab, vocab, str(path / VOCAB))
    else:
        vocab = saved_vocab
    if config.backbone != "builtin":
        if not (path / HF_DIR / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no {HF_DIR}/config.json for its "
                                    f"{config.backbone} backbone")
        model = cls(config, vocab, _backbone_dir=str(path / HF_DIR))
    else:
        model = cls(config, vocab)
    fill_weights(model, read_safetensors(path / WEIGHTS, map_location), saved_vocab, str(path / WEIGHTS))
    return model.to(map_location)


def init_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """``--init-from``: copy the weights of model dir ``path`` into the freshly built ``model``
    (same architecture; its vocabulary may extend or reorder the saved one)."""
    path = check_model_dir(path)
    grown = fill_weights(model, read_safetensors(path / WEIGHTS), Vocabulary.load(path / VOCAB), str(path / WEIGHTS))
    log.info("initialized from %s%s", path, f" ({grown} tensors grown with the vocabulary)" if grown else "")


# ---- copying (pack, export) --------------------------------------------------------------------
def copy_model(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the model part of model dir ``src`` into ``dst`` in the current format (a format-1
    dir is converted: ``config.json`` and ``llama_config.json`` written, weights re-saved with
    metadata, tensors unchanged)."""
    src, dst = check_model_dir(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    data = read_config_dict(src)
    if data.get("format_version") == FORMAT_VERSION:
        for name in MODEL_FILES:
            if (src / name).is_dir():
                shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
            elif (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        return dst
    config, vocab = read_config(src), Vocabulary.load(src / VOCAB)
    log.info("%s is a format-%s model dir: writing it as format %d", src, data.get("format_version"), FORMAT_VERSION)
    write_weights(read_safetensors(src / WEIGHTS), dst / WEIGHTS)
    # keys ModelConfig no longer has stay for their readers (an old model's autocast sets its decode precision)
    new = config_dict(config)
    retired = {k: v for k, v in data.items() if k not in ModelConfig.__dataclass_fields__ and k not in new}
    write_json(dst / CONFIG, {**new, **retired})
    shutil.copy2(src / VOCAB, dst / VOCAB)
    if config.backbone == "builtin":
        write_json(dst / LLAMA_CONFIG, llama_config(config, vocab))
    if (src / HF_DIR).is_dir():
        shutil.copytree(src / HF_DIR, dst / HF_DIR, dirs_exist_ok=True)
    return dst


__all__ = ["MODEL_TYPE", "FORMAT_VERSION", "CONFIG", "LEGACY_CONFIG", "WEIGHTS", "VOCAB", "HF_DIR", "LLAMA_CONFIG",
           "MODEL_FILES", "VOCAB_ROWS", "WeightsFileError", "is_model_dir", "is_hf_dir", "check_model_dir",
           "config_dict", "read_config", "read_config_dict", "llama_config", "read_safetensors", "write_weights",
           "aliases", "write_model", "check_state", "read_weights", "check_extension", "vocab_id_map",
           "fill_weights", "load_model", "init_weights", "copy_model"]
