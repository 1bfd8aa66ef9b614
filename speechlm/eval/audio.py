"""Reading audio for evaluation: Kaldi-style specs to mono float32 arrays at a chosen rate.

An audio spec is one of:

- a file path (anything ``soundfile`` reads: wav, flac, ogg ...);
- a Kaldi pipe ``"cmd args |"`` whose standard output is a wav file;
- a dict ``{"path": spec, "start": seconds, "end": seconds}`` (a segment of a recording),
  as written by ``speechlm prepare`` into manifests.

Reading and resampling are :mod:`speechlm.data.audio`'s (soundfile, torchaudio); relative paths
are resolved by :mod:`speechlm.eval.sources` when a ``wav.scp`` or manifest is read.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def spec_name(spec: Any) -> str:
    """A short printable name of an audio spec, for error messages."""
    if isinstance(spec, dict):
        return f"{spec.get('path')}[{spec.get('start')}:{spec.get('end')}]"
    return str(spec)


def load_audio(spec: Any, target_sr: int | None = None, utt: str | None = None) -> tuple[np.ndarray, int]:
    """An audio spec as a mono float32 array at ``target_sr`` (when given) and its rate.

    :func:`speechlm.data.audio.read_audio` and :func:`~speechlm.data.audio.resample` do the work;
    for scoring, empty audio is an empty array (a decoder's empty output fails that utterance, not
    the run), a missing file a ``FileNotFoundError`` and unreadable audio a ``ValueError``, which
    the metrics count as that utterance's failure.
    """
    from speechlm.data.audio import AudioError, read_audio, resample, to_mono

    try:
        wav, sr = read_audio(spec, utt, allow_empty=True)
    except AudioError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(str(e)) from e
    wav = np.ascontiguousarray(to_mono(wav), dtype=np.float32)
    if target_sr is not None and sr != target_sr:
        wav, sr = resample(wav, sr, target_sr), target_sr
    return wav, int(sr)


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
