"""Checkpoint integrity: manifests of sizes + sha256, safe loading of ``.pt`` files, RNG state as plain data.

A checkpoint's ``COMPLETE`` marker is written last and holds the manifest::

    {"step": 100, "format": 2,
     "files": {"model.safetensors": {"size": 1234, "sha256": "9f2c..."}, "rng/rank_0.pt": {...}, ...}}

so a checkpoint whose files were truncated or changed after it was written is found before any
of it is loaded. Markers of older checkpoints have no ``files``; those get structural checks
only (safetensors header against the file size, JSON parses, ``.pt`` zip directory present).

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: a pickle that would build any
object other than tensors and plain containers is refused, so a crafted ``optimizer.pt`` runs
nothing. RNG states are therefore stored as plain lists / ints / tensors (:func:`rng_state`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint file is damaged, unreadable or unsafe; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.pt`` file holds pickled objects other than tensors and plain data (never executed)."""


# ---- manifests -------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_manifest(directory: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {size, sha256}}`` of every file under ``directory`` (but ``skip``)."""
    root = Path(directory)
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip:
            files[rel] = {"size": p.stat().st_size, "sha256": file_digest(p)}
    return files


def _structural_problem(path: Path) -> str | None:
    """Cheap checks of one file of a checkpoint that has no manifest (older format)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):  # checks the header against the file size
                pass
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".pt":
            with zipfile.ZipFile(path):  # torch.save's zip: a truncated file has no central directory
                pass
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        return f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def verify_checkpoint(path: str | os.PathLike, marker: str = "COMPLETE", required: tuple[str, ...] = ()) -> list[str]:
    """Problems of the checkpoint dir ``path`` (empty when intact), each naming the file.

    With a manifest in ``marker``: every listed file must exist with its size and sha256.
    Without one (older checkpoints): ``required`` files must exist and parse.
    """
    path = Path(path)
    try:
        info = json.loads((path / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{path / marker}: unreadable ({e})"]
    files = info.get("files") if isinstance(info, dict) else None
    problems = []
    if files is None:
        for name in required:
            if not (path / name).is_file():
                problems.append(f"{path / name}: missing")
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name != marker and (msg := _structural_problem(p)):
                problems.append(msg)
        return problems
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"{f}: missing (the manifest in {path / marker} lists it)")
            continue
        size = f.stat().st_size
        if size != want["size"]:
            problems.append(f"{f}: {size} bytes, the manifest says {want['size']} (truncated or replaced)")
        elif file_digest(f) != want["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest (changed after it was written)")
    return problems


# ---- safe loading ----------------------------------------------------------------------------
def _numpy_globals() -> list:
    """The numpy globals an old RNG file (``np.random.get_state()`` pickled) needs: array
    reconstruction only, which builds arrays and nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint file", legacy_numpy: bool = False,
                    allowed: list | tuple = ()):
    """``torch.load(path, weights_only=True)`` on CPU with errors that name the file.

    A pickle asking for any other global (a crafted file, or an object this project never stores)
    raises :class:`UnsafeCheckpointError` without running it; a damaged file raises
    :class:`CheckpointError`. ``legacy_numpy`` also allows numpy arrays (RNG files of older runs);
    ``allowed``: further classes the code (never the file) vouches for, e.g. DeepSpeed's own.
    """
    path = Path(path)
    extra = [*(_numpy_globals() if legacy_numpy else []), *allowed]
    try:
        if extra:
            with torch.serialization.safe_globals(extra):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise UnsafeCheckpointError(
            f"{path}: refused to load this {what}: it holds pickled objects other than tensors and plain "
            f"data ({detail.strip()}), which could run code. It was not executed. If the file is not from "
            f"this toolkit, delete it (or the checkpoint dir) and resume from another checkpoint"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read this {what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); the file is damaged or truncated") from e


# ---- RNG state as plain data -----------------------------------------------------------------
def rng_state() -> dict:
    """Python / numpy / torch (/ CUDA) RNG state as lists, ints and tensors (``weights_only`` safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` output (or the tuples of older checkpoints)."""
    py = state["python"]
    if isinstance(py, dict):
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    else:
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in py))
    npy = state["numpy"]
    if isinstance(npy, dict):
        keys = npy["keys"].numpy() if torch.is_tensor(npy["keys"]) else np.asarray(npy["keys"])
        np.random.set_state((npy["kind"], keys.astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    else:
        np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in a nested dict/list (an estimate of what a save writes)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


__all__ = ["CheckpointError", "UnsafeCheckpointError", "file_digest", "build_manifest", "verify_checkpoint",
           "safe_torch_load", "rng_state", "set_rng_state", "tensor_bytes", "FORMAT"]
