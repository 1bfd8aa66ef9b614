"""Reading audio for evaluation: Kaldi-style specs to mono float32 arrays at a chosen rate.

An audio spec is one of:

- a file path (anything ``soundfile`` reads: wav, flac, ogg ...);
- a Kaldi pipe ``"cmd args |"`` whose standard output is a wav file;
- a dict ``{"path": spec, "start": seconds, "end": seconds}`` (a segment of a recording),
  as written by ``speechlm prepare`` into manifests.

Rates are converted with ``torchaudio.functional.resample`` when they differ.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def spec_name(spec: Any) -> str:
    """A short printable name of an audio spec, for error messages."""
    if isinstance(spec, dict):
        return f"{spec.get('path')}[{spec.get('start')}:{spec.get('end')}]"
    return str(spec)


def _read_bytes_or_path(spec: str, base_dir: str | os.PathLike | None) -> Any:
    spec = spec.strip()
    if spec.endswith("|"):
        cmd = spec[:-1].strip()
        proc = subprocess.run(cmd, shell=True, capture_output=True, cwd=base_dir)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise ValueError(f"audio pipe {cmd!r} failed (exit {proc.returncode}): {err[-1] if err else ''}")
        return io.BytesIO(proc.stdout)
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = Path(base_dir) / path
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {spec}")
    return str(path)


def read_audio(spec: Any, base_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, int]:
    """Read an audio spec as a mono float32 array in [-1, 1] and its sample rate.

    Relative paths are tried as given, then relative to ``base_dir`` (the data or decode dir
    whose ``wav.scp`` named them). Multi-channel audio is averaged to mono.
    """
    import soundfile as sf

    start = end = None
    if isinstance(spec, dict):
        if "path" not in spec:
            raise ValueError(f"audio segment {spec!r} has no 'path'")
        start, end = spec.get("start"), spec.get("end")
        spec = spec["path"]
    src = _read_bytes_or_path(str(spec), base_dir)
    try:
        wav, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio {spec}: {e}") from e
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if start is not None or end is not None:
        s = int(round(float(start or 0.0) * sr))
        e = len(wav) if end is None or float(end) < 0 else int(round(float(end) * sr))
        wav = wav[s:e]
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float32 array from ``sr`` to ``target_sr`` (torchaudio, sinc interpolation)."""
    if sr == target_sr:
        return wav
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), int(sr), int(target_sr))
    return out.numpy().astype(np.float32, copy=False)


def load_audio(
    spec: Any, target_sr: int | None = None, base_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, int]:
    """:func:`read_audio`, then resample to ``target_sr`` if given; returns ``(wav, rate)``."""
    wav, sr = read_audio(spec, base_dir)
    if target_sr is not None and sr != target_sr:
        wav, sr = resample(wav, sr, target_sr), target_sr
    return wav, sr


def align_lengths(a: np.ndarray, b: np.ndarray, utt: str = "", tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Trim two signals to the shorter length; warn when they differ by more than ``tolerance``.

    Codecs often add or drop a few samples of padding; a large mismatch usually means the
    hypothesis and reference are different utterances.
    """
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError(f"utterance {utt!r}: empty audio (lengths {len(a)} and {len(b)})")
    if abs(len(a) - len(b)) > tolerance * max(len(a), len(b)):
        logger.warning("utterance %r: lengths differ by more than %d%% (%d vs %d samples); trimming",
                       utt, int(tolerance * 100), len(a), len(b))
    return a[:n], b[:n]
