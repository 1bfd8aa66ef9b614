"""Reading audio for evaluation: Kaldi-style specs to mono float32 arrays at a chosen rate.

An audio spec is one of:

- a file path (anything ``soundfile`` reads: wav, flac, ogg ...);
- a Kaldi pipe ``"cmd args |"`` whose standard output is a wav file;
- a dict ``{"path": spec, "start": seconds, "end": seconds}`` (a segment of a recording),
  as written by ``speechlm prepare`` into manifests.

Reading and resampling use :mod:`speechlm.data.audio` (soundfile, torchaudio); relative paths
are resolved by :mod:`speechlm.eval.sources` when a ``wav.scp`` or manifest is read.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def spec_name(spec: Any) -> str:
    """A short printable name of an audio spec, for error messages."""
    if isinstance(spec, dict):
        return f"{spec.get('path')}[{spec.get('start')}:{spec.get('end')}]"
    return str(spec)


def read_audio(spec: Any, utt: str | None = None) -> tuple[np.ndarray, int]:
    """Read an audio spec as a mono float32 array and its sample rate.

    Uses :func:`speechlm.data.audio.read_audio` (paths, pipes, segments); an empty *file* gives
    an empty array instead of an error, so a decoder's empty output scores as a failure of that
    utterance rather than stopping the run.
    """
    from speechlm.data.audio import read_audio as _read, to_mono

    if isinstance(spec, (str, os.PathLike)) and not str(spec).rstrip().endswith("|"):
        path = str(spec).strip()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{'utterance ' + utt + ': ' if utt else ''}audio file not found: {path}")
        import soundfile as sf

        try:
            info = sf.info(path)
        except Exception as e:
            raise ValueError(f"{'utterance ' + utt + ': ' if utt else ''}cannot read audio {path}: {e}") from e
        if info.frames == 0:
            return np.zeros(0, dtype=np.float32), int(info.samplerate)
    wav, sr = _read(spec, utt)
    return np.ascontiguousarray(to_mono(wav), dtype=np.float32), int(sr)


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float32 array from ``sr`` to ``target_sr`` (torchaudio, band-limited sinc)."""
    if sr == target_sr or len(wav) == 0:
        return wav
    from speechlm.data.audio import resample as _resample

    return np.asarray(_resample(wav, int(sr), int(target_sr)), dtype=np.float32)


def load_audio(spec: Any, target_sr: int | None = None, utt: str | None = None) -> tuple[np.ndarray, int]:
    """:func:`read_audio`, then resample to ``target_sr`` if given; returns ``(wav, rate)``."""
    wav, sr = read_audio(spec, utt)
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
