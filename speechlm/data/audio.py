"""The one audio reader (soundfile, ``cmd |`` pipes, segments) and resampler (torchaudio) of
the toolkit: tokenizers, training, decoding and scoring all read audio through this module."""
from __future__ import annotations

import functools
import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


class AudioError(IOError):
    """An audio entry could not be read; the message names the entry."""


class AudioNotFound(AudioError, FileNotFoundError):
    """An audio file does not exist."""


def read_audio(value: Any, utt_id: str | None = None, allow_pipes: bool = True,
               allow_empty: bool = False) -> tuple[np.ndarray, int]:
    """Read one ``wav.scp`` value: a path, a ``cmd |`` pipe, or ``{"path", "start", "end"}`` (seconds).

    Returns float32 ``[samples]`` (mono) or ``[samples, channels]`` and the sample rate.
    ``allow_pipes``: run a value ending in ``|`` through the shell (the wav.scp convention of the
    recipes' own data dirs). Code that takes paths from users or the network passes False: such a
    value is then an ordinary file name, and a missing one says that pipes are off.
    ``allow_empty``: empty audio is returned rather than an error (scoring: a decoder's empty
    output is a failure of that utterance, not of the run).
    """
    who = f"utterance {utt_id}: " if utt_id else ""
    start = end = None
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end")
        value = value["path"]
    value = str(value).strip()
    try:
        if value.endswith("|") and allow_pipes:
            proc = subprocess.run(value[:-1], shell=True, capture_output=True, check=False)
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise AudioError(f"{who}command {value!r} failed (exit {proc.returncode}): {err[0]}")
            wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        else:
            if not Path(value).is_file():
                hint = " (a `cmd |` pipe is run only with allow_pipes=True)" if value.endswith("|") else ""
                raise AudioNotFound(f"{who}audio file not found: {value}{hint}")
            if start is not None:
                info = sf.info(value)
                a = int(round(start * info.samplerate))
                b = None if end is None or end < 0 else int(round(end * info.samplerate))
                wav, sr = sf.read(value, start=a, stop=b, dtype="float32")
                start = None
            else:
                wav, sr = sf.read(value, dtype="float32")
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{who}cannot read audio {value!r}: {e}") from e
    if start is not None:  # segment of piped audio
        a = int(round(start * sr))
        b = None if end is None or end < 0 else int(round(end * sr))
        wav = wav[a:b]
    if wav.size == 0 and not allow_empty:
        raise AudioError(f"{who}audio {value!r} is empty")
    return wav, int(sr)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """``[samples, channels]`` -> ``[samples]`` by averaging channels."""
    return wav.mean(axis=1).astype(np.float32) if wav.ndim == 2 else wav


KERNEL_DTYPES = ("float32", "float64")


@functools.lru_cache(maxsize=32)
def _resampler(from_sr: int, to_sr: int, kernel_dtype: str):
    import torch
    import torchaudio

    # float32: the kernel torchaudio.functional.resample builds for float32 audio; float64: built
    # in float64, then rounded (torchaudio.transforms.Resample's default). Built once per rates.
    return torchaudio.transforms.Resample(from_sr, to_sr, dtype=torch.float32 if kernel_dtype == "float32" else None)


def resample(wav: np.ndarray, from_sr: int, to_sr: int, kernel_dtype: str = "float32") -> np.ndarray:
    """Resample a mono or ``[samples, channels]`` float32 waveform with torchaudio (band-limited
    sinc, Hann window, width 6, rolloff 0.99; the kernel is cached per pair of rates).

    ``kernel_dtype`` is the precision the sinc kernel is computed in. The two give outputs that
    differ in the last bits (about 1e-6), and each caller keeps the one its tokens and scores were
    made with: ``"float64"`` for the Codec 2 and SSL tokenizers, ``"float32"`` everywhere else.
    """
    if kernel_dtype not in KERNEL_DTYPES:
        raise ValueError(f"kernel_dtype must be one of {', '.join(KERNEL_DTYPES)}, got {kernel_dtype!r}")
    if from_sr == to_sr or len(wav) == 0:
        return np.asarray(wav, dtype=np.float32)
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    with torch.inference_mode():
        y = _resampler(int(from_sr), int(to_sr), kernel_dtype)(x.T if x.ndim == 2 else x)
    return (y.T if wav.ndim == 2 else y).numpy()


def load_audio(value: Any, sample_rate: int | None = None, utt_id: str | None = None,
               allow_pipes: bool = True) -> np.ndarray:
    """Mono float32 waveform, resampled to ``sample_rate`` when given (``allow_pipes``: see :func:`read_audio`)."""
    wav, sr = read_audio(value, utt_id, allow_pipes)
    wav = to_mono(wav)
    return resample(wav, sr, sample_rate) if sample_rate else wav


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav atomically."""
    from speechlm.utils.fileio import atomic_open

    with atomic_open(path, "wb") as f:
        sf.write(f, np.clip(wav, -1, 1), sample_rate, format="WAV", subtype="PCM_16")
