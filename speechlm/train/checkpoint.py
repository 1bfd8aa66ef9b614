"""Checkpoint directories: written atomically, found by completeness, pruned, averaged.

Layout (each checkpoint is also a model dir that ``SpeechLM.from_pretrained`` loads)::

    checkpoints/step_00000100/
        config.yaml  model.safetensors  token_list.json   the model (written by the trainer)
        optimizer.pt                                      full optimizer state (AdamW moments)
        trainer_state.json                                step, tokens, schedule, sampler, metrics
        rng/rank_0.pt ...                                 Python/numpy/torch/CUDA RNG per rank
        COMPLETE                                          written last, before the rename

Everything goes into ``.step_00000100.tmp/`` first and is renamed when whole, so a run killed
while saving leaves the previous checkpoint as the newest complete one.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from speechlm.train.distributed import DistEnv, barrier
from speechlm.utils.fileio import write_json

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: str | os.PathLike, step: int, env: DistEnv, write_model: Callable[[Path], None],
                    optimizer_state: dict | None, trainer_state: dict) -> Path:
    """Collective: every rank calls it (each writes its RNG state; rank 0 writes the rest)."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if env.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / "rng" / f"rank_{env.rank}.pt")
    barrier()
    if env.is_main:
        write_model(tmp)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        write_json(tmp / "trainer_state.json", trainer_state)
        write_json(tmp / MARKER, {"step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.info("saved checkpoint %s", final)
    barrier()
    return final


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete ``step_N`` dirs under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None (incomplete ones are ignored with a warning)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if (_STEP_DIR.match(p.name) and not is_complete(p)) or p.name.endswith(".tmp"):
                log.warning("ignoring incomplete checkpoint %s", p)
    done = list_checkpoints(root)
    return done[-1] if done else None


def read_state(path: str | os.PathLike) -> dict:
    with open(Path(path) / "trainer_state.json", encoding="utf-8") as f:
        return json.load(f)


def load_rng(path: str | os.PathLike, rank: int) -> None:
    f = Path(path) / "rng" / f"rank_{rank}.pt"
    if f.is_file():
        set_rng_state(torch.load(f, weights_only=False))
    else:
        log.warning("%s: no RNG state for rank %d (the world size changed?); keeping fresh RNG", path, rank)


def _score(path: Path) -> float | None:
    v = read_state(path).get("valid", {}).get("loss")
    return None if v is None or v != v else float(v)


def best_checkpoints(root: str | os.PathLike, n: int) -> list[Path]:
    """The ``n`` complete checkpoints with the lowest validation loss, best first."""
    scored = [(s, p) for p in list_checkpoints(root) if (s := _score(p)) is not None]
    return [p for _, p in sorted(scored, key=lambda x: x[0])[:n]]


def prune_checkpoints(root: str | os.PathLike, keep_last: int, keep_best: int) -> list[Path]:
    """Delete complete checkpoints that are neither among the last ``keep_last`` nor the
    ``keep_best`` best; returns the deleted dirs."""
    done = list_checkpoints(root)
    keep = set(done[-max(keep_last, 1):]) | set(best_checkpoints(root, keep_best))
    removed = [p for p in done if p not in keep]
    for p in removed:
        shutil.rmtree(p)
        log.info("removed checkpoint %s (keep_last=%d, keep_best=%d)", p, keep_last, keep_best)
    return removed


def average_checkpoints(paths: list[Path], out_dir: str | os.PathLike) -> Path:
    """Average ``model.safetensors`` of ``paths`` (floating tensors; others from the first) into
    ``out_dir``, with the model files of the first checkpoint beside it."""
    from safetensors.torch import load_file, save_file

    if not paths:
        raise ValueError("no checkpoint to average")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    avg: dict[str, torch.Tensor] = {}
    for p in paths:
        sd = load_file(str(p / "model.safetensors"))
        for k, v in sd.items():
            if k not in avg:
                avg[k] = v.double() if v.is_floating_point() else v
            elif v.is_floating_point():
                avg[k] += v.double()
    first = load_file(str(paths[0] / "model.safetensors"))
    avg = {k: (v / len(paths)).to(first[k].dtype) if v.is_floating_point() else v for k, v in avg.items()}
    for f in paths[0].iterdir():  # config.yaml, token_list.json, hf_backbone/ ...
        if f.name in ("model.safetensors", "optimizer.pt", MARKER, "trainer_state.json", "rng"):
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
    save_file(avg, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    write_json(tmp / "averaged_from.json", {"checkpoints": [str(p) for p in paths]})
    write_json(tmp / MARKER, {"averaged": len(paths)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("averaged %d checkpoints into %s", len(paths), out)
    return out


def final_model_dir(exp_dir: str | os.PathLike) -> Path:
    """The model dir a finished run hands on (to ``pack`` / ``decode``): ``checkpoints/average``
    when averaging ran, else the best checkpoint by validation loss, else the newest."""
    root = Path(exp_dir) / "checkpoints"
    if is_complete(root / "average"):
        return root / "average"
    best = best_checkpoints(root, 1) or list_checkpoints(root)[-1:]
    if not best:
        raise FileNotFoundError(f"no complete checkpoint in {root} (train with `speechlm train --out-dir {exp_dir}`)")
    return best[0]


__all__ = ["save_checkpoint", "final_model_dir", "latest_checkpoint", "list_checkpoints", "read_state", "load_rng",
           "best_checkpoints", "prune_checkpoints", "average_checkpoints", "step_dir", "is_complete"]
