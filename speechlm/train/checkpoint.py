"""Checkpoint directories: written atomically, found by completeness, pruned, averaged.

Layout (each checkpoint is also a model dir that ``SpeechLM.from_pretrained`` loads)::

    checkpoints/step_00000100/
        config.json  model.safetensors  token_list.json   the model part of a model dir
        llama_config.json (or hf_backbone/)               (speechlm/models/model_dir.py)
        optimizer.pt                                      full optimizer state (AdamW moments)
        trainer_state.json                                step, tokens, schedule, sampler, metrics
        rng/rank_0.pt ...                                 Python/numpy/torch/CUDA RNG per rank
        COMPLETE                                          written last: the manifest (size + sha256
                                                          of every other file), before the rename

Everything goes into ``.step_00000100.tmp/`` first and is renamed when whole, so a run killed
while saving leaves the previous checkpoint as the newest complete one. A save that fails (disk
full) removes its ``.tmp`` dir and says how much space it needed; earlier checkpoints stay.
Resuming verifies the newest checkpoint against its manifest; a damaged one is named, renamed to
``step_N.corrupt`` and the newest intact one is used (:func:`resume_checkpoint`). ``.pt`` files
are only read with ``torch.load(weights_only=True)`` (:mod:`speechlm.train.integrity`).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from speechlm.train.distributed import DistEnv, barrier, broadcast_object
from speechlm.train.integrity import (FORMAT, CheckpointError, build_manifest, rng_state, safe_torch_load,
                                      set_rng_state, verify_checkpoint)
from speechlm.utils.fileio import write_json

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (e.g. disk full); the partial dir is gone, earlier ones are kept."""


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _failed_ranks(failed: bool) -> int:
    """How many ranks failed (collective, so no rank waits forever at a barrier of a failed save)."""
    from speechlm.train.numerics import all_reduce_sum

    return int(all_reduce_sum(torch.tensor([float(failed)]))[0])


#: how a full disk shows in errors that are not OSError (safetensors' Rust IoError, torch's zip writer)
_DISK_FULL_TEXT = ("No space left", "StorageFull", "Disk quota", "file write failed")


def _save_error(root: Path, final: Path, tmp: Path, error: Exception, needed: int) -> CheckpointSaveError:
    free = shutil.disk_usage(root).free if root.exists() else None
    kept = [p.name for p in list_checkpoints(root)]
    full = (getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or any(t in str(error) for t in _DISK_FULL_TEXT) or (free is not None and needed and free < needed))
    what = "the disk is full" if full else f"{type(error).__name__}"
    where = getattr(error, "filename", None) or tmp
    need = f"it needs about {needed / 1e6:.1f} MB" if needed else "its size is unknown"
    free_s = f", {free / 1e6:.1f} MB are free there" if free is not None else ""
    return CheckpointSaveError(
        f"saving checkpoint {final} failed: {what} ({where}: {error}); {need}{free_s}. "
        f"The partial {tmp} was removed; earlier checkpoints are kept ({', '.join(kept) or 'none yet'}). "
        f"Free some space (or lower keep_last / keep_best), then run the same command to resume")


def save_checkpoint(root: str | os.PathLike, step: int, env: DistEnv, write_model: Callable[[Path], None],
                    optimizer_state: dict | None, trainer_state: dict, size_hint: int = 0) -> Path:
    """Collective: every rank calls it (each writes its RNG state; rank 0 writes the rest and the
    manifest). ``size_hint``: bytes the save is expected to take (named when the disk is full)."""
    root = Path(root)
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    # a full disk surfaces as OSError, or as RuntimeError from torch.save / safetensors' writers
    error: Exception | None = None
    try:
        if env.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
    except OSError as e:
        error = e
    if _failed_ranks(error is not None) == 0:
        try:
            torch.save(rng_state(), tmp / "rng" / f"rank_{env.rank}.pt")
        except (OSError, RuntimeError) as e:
            error = e
    if _failed_ranks(error is not None) == 0 and env.is_main:
        try:
            write_model(tmp)
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            write_json(tmp / "trainer_state.json", trainer_state)
            # the marker is the manifest and is written last: a dir with it is whole and checkable
            write_json(tmp / MARKER, {"step": step, "format": FORMAT, "files": build_manifest(tmp, (MARKER,))})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            log.info("saved checkpoint %s", final)
        except Exception as e:  # noqa: BLE001 - whatever failed, the partial dir must go
            error = e
    failed = _failed_ranks(error is not None)
    if failed:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        newest = list_checkpoints(root)
        needed = size_hint or (_dir_size(newest[-1]) if newest else 0)
        if error is None:  # another rank failed
            error = OSError(errno.EIO, f"{failed} other rank(s) failed to write their files", str(tmp))
        err = _save_error(root, final, tmp, error, needed)
        log.error("%s", err)
        raise err from error
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
    """``trainer_state.json`` of checkpoint ``path`` (errors name the file)."""
    f = Path(path) / "trainer_state.json"
    try:
        with open(f, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: cannot read the trainer state ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected a JSON object, found {type(state).__name__}")
    return state


def load_rng(path: str | os.PathLike, rank: int) -> None:
    """Restore this rank's RNG state (``weights_only`` loading; numpy arrays allowed for older files)."""
    f = Path(path) / "rng" / f"rank_{rank}.pt"
    if f.is_file():
        state = safe_torch_load(f, "RNG state", legacy_numpy=True)
        try:
            set_rng_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{f}: not an RNG state this toolkit wrote ({type(e).__name__}: {e})") from e
    else:
        log.warning("%s: no RNG state for rank %d (the world size changed?); keeping fresh RNG", path, rank)


def load_optimizer_state(path: str | os.PathLike, allowed: list | tuple = ()) -> dict | None:
    """The optimizer state of checkpoint ``path`` (``weights_only`` loading; ``allowed``: classes
    the distributed engine's optimizer stores), or None without one."""
    f = Path(path) / "optimizer.pt"
    if not f.is_file():
        return None
    state = safe_torch_load(f, "optimizer state", allowed=allowed)
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected an optimizer state dict, found {type(state).__name__}")
    return state


#: files every checkpoint written by the trainer has (checked in older checkpoints without a manifest)
REQUIRED = ("model.safetensors", "config.yaml", "token_list.json", "trainer_state.json")


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint ``step_N`` to ``step_N.corrupt`` (``.corrupt1``, ... if taken)."""
    dest, i = path.with_name(path.name + ".corrupt"), 0
    while dest.exists():
        i += 1
        dest = path.with_name(f"{path.name}.corrupt{i}")
    os.replace(path, dest)
    return dest


def resume_checkpoint(root: str | os.PathLike, env: DistEnv | None = None) -> Path | None:
    """The newest intact checkpoint under ``root`` (collective; rank 0 decides).

    Each candidate, newest first, is verified against its manifest (:func:`verify_checkpoint`); a
    damaged one is named in a warning and renamed to ``step_N.corrupt`` so it is neither resumed
    nor pruned as a good one, and the next older one is tried.
    """
    chosen = None
    if env is None or env.is_main:
        latest_checkpoint(root)  # warns about incomplete ones
        for path in reversed(list_checkpoints(root)):
            problems = verify_checkpoint(path, MARKER, REQUIRED)
            if not problems:
                chosen = str(path)
                break
            moved = set_aside(path)
            log.warning("checkpoint %s is damaged, set aside as %s: %s", path, moved.name, "; ".join(problems))
        else:
            if Path(root).is_dir() and any(".corrupt" in p.name for p in Path(root).iterdir()):
                log.warning("no intact checkpoint left in %s: training starts from the beginning", root)
    chosen = broadcast_object(chosen)
    return Path(chosen) if chosen else None


def _score(path: Path) -> float | None:
    try:
        v = read_state(path).get("valid", {}).get("loss")
    except CheckpointError as e:
        log.warning("not ranking checkpoint %s: %s", path, e)
        return None
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
    from speechlm.models.model_dir import WEIGHTS, read_safetensors, write_weights

    if not paths:
        raise ValueError("no checkpoint to average")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    avg: dict[str, torch.Tensor] = {}
    for p in paths:
        sd = read_safetensors(p / WEIGHTS)
        for k, v in sd.items():
            if k not in avg:
                avg[k] = v.double() if v.is_floating_point() else v
            elif v.is_floating_point():
                avg[k] += v.double()
    first = read_safetensors(paths[0] / WEIGHTS)
    avg = {k: (v / len(paths)).to(first[k].dtype) if v.is_floating_point() else v for k, v in avg.items()}
    for f in paths[0].iterdir():  # config.json, token_list.json, llama_config.json or hf_backbone/ ...
        if f.name in (WEIGHTS, "optimizer.pt", MARKER, "trainer_state.json", "rng"):
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
    write_weights(avg, tmp / WEIGHTS)
    write_json(tmp / "averaged_from.json", {"checkpoints": [str(p) for p in paths]})
    write_json(tmp / MARKER, {"averaged": len(paths), "format": FORMAT, "files": build_manifest(tmp, (MARKER,))})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("averaged %d checkpoints into %s", len(paths), out)
    return out


def select_checkpoint(exp_dir: str | os.PathLike, which: str = "final", n_average: int = 3,
                      scratch: str | os.PathLike | None = None) -> Path:
    """The model dir of run ``exp_dir`` that ``which`` names (the one checkpoint choice of
    ``pack``, ``decode`` and the scripts):

    - ``final``: ``checkpoints/average`` when the run averaged, else its best checkpoint by
      validation loss, else its newest;
    - ``latest``: the newest complete checkpoint;
    - ``average``: the mean of the ``n_average`` best (else of the newest), written to ``scratch``;
    - anything else: the path of a checkpoint or model dir.
    """
    from speechlm.models.model_dir import is_model_dir

    root = Path(exp_dir) / "checkpoints"
    if which == "final" and is_complete(root / "average"):
        ckpt: Path | None = root / "average"
    elif which in ("final", "average"):
        best = best_checkpoints(root, n_average if which == "average" else 1) or list_checkpoints(root)[-1:]
        if which == "average" and best:
            if scratch is None:
                raise ValueError("select_checkpoint(which='average') needs a scratch dir for the average")
            ckpt = average_checkpoints(best, scratch)
        else:
            ckpt = best[0] if best else None
    elif which == "latest":
        ckpt = latest_checkpoint(root)
    else:
        ckpt = Path(which)
    if ckpt is None or not is_model_dir(ckpt):
        where = root if ckpt is None else ckpt
        raise FileNotFoundError(f"no complete checkpoint in {where} (train with `speechlm train --out-dir "
                                f"{exp_dir}`, or name a checkpoint dir)")
    return ckpt


def final_model_dir(exp_dir: str | os.PathLike) -> Path:
    """The model dir a finished run hands on (to ``pack`` / ``decode``): ``select_checkpoint(exp_dir)``."""
    return select_checkpoint(exp_dir, "final")


__all__ = ["save_checkpoint", "select_checkpoint", "final_model_dir", "latest_checkpoint", "list_checkpoints", "read_state", "load_rng",
           "best_checkpoints", "prune_checkpoints", "average_checkpoints", "step_dir", "is_complete",
           "resume_checkpoint", "load_optimizer_state", "set_aside", "CheckpointSaveError", "CheckpointError",
           "rng_state", "set_rng_state"]
