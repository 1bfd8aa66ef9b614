"""Audio in and out of the server: uploaded bytes -> a checked waveform, waveforms -> streamed
WAV / PCM16 bytes, typed words -> speech (espeak-ng) for models that only read speech.

Uploaded audio is decoded from memory with soundfile (WAV, FLAC, OGG: whatever libsndfile
reads); nothing from a request ever reaches a shell or the file system.
"""
from __future__ import annotations

import base64
import binascii
import io
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from speechlm.serve.openai_format import APIError

# a streamed WAV's size fields are unknown when its header leaves: the largest value, which
# players and libsndfile read as "until the end of the stream"
_UNKNOWN = 0xFFFFFFFF


def decode_audio(data: bytes, max_seconds: float, what: str = "file") -> tuple[np.ndarray, int]:
    """Uploaded audio bytes -> (mono float32, sample rate); 400 for unreadable or empty audio,
    413 for audio longer than ``max_seconds``."""
    import soundfile as sf

    if not data:
        raise APIError(400, f"{what}: the audio is empty", what)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr, frames = f.samplerate, f.frames
            if sr <= 0:
                raise APIError(400, f"{what}: the audio has no sample rate", what)
            if frames / sr > max_seconds:
                raise APIError(413, f"{what}: the audio lasts {frames / sr:.1f} s; this server takes at most "
                                    f"{max_seconds:g} s (--max-audio-s)", what)
            wav = f.read(dtype="float32", always_2d=True)
    except APIError:
        raise
    except Exception as e:  # libsndfile's message says what it could not read
        raise APIError(400, f"{what}: could not read the audio ({e}); send WAV, FLAC or OGG", what) from None
    if wav.shape[0] == 0:
        raise APIError(400, f"{what}: the audio has no samples", what)
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(wav).all():
        raise APIError(400, f"{what}: the audio holds NaN or infinite samples", what)
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


def decode_base64(data: str, max_bytes: int, what: str) -> bytes:
    """Base64 (or a ``data:...;base64,`` URL) -> bytes; 400 when malformed, 413 when too big."""
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or ";base64" not in head:
            raise APIError(400, f"{what}: a data URL must be data:<type>;base64,<data>", what)
    if len(data) * 3 // 4 > max_bytes:
        raise APIError(413, f"{what}: the audio is larger than {max_bytes // 2**20} MiB (--max-request-mb)", what)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{what}: not valid base64", what) from None


def pcm16(wav: np.ndarray) -> bytes:
    """Float waveform -> little-endian 16-bit PCM bytes (clipped)."""
    x = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    return (np.round(x * 32767.0).astype("<i2")).tobytes()


def wav_header(sample_rate: int, n_samples: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; ``n_samples`` None = a stream of unknown length."""
    data = _UNKNOWN if n_samples is None else 2 * n_samples
    riff = _UNKNOWN if n_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
                                                                                2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data))


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """A whole waveform as WAV file bytes (PCM16 mono)."""
    return wav_header(sample_rate, len(wav)) + pcm16(wav)


def speak_words(text: str, sample_rate: int = 16000) -> tuple[np.ndarray, int]:
    """Typed words -> speech with espeak-ng (argument list, no shell), for models that read speech
    only; 400 when espeak-ng is not installed."""
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        raise APIError(400, "this model reads speech: send an input_audio part (the server has no espeak-ng to "
                            "speak typed text; apt-get install espeak-ng)", "messages")
    with tempfile.TemporaryDirectory(prefix="speechlm-serve-") as d:
        path = Path(d) / "typed.wav"
        # "--" ends the options: text starting with '-' stays text
        subprocess.run(["espeak-ng", "-w", str(path), "--", text], check=True, capture_output=True, timeout=60)
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return wav.mean(axis=1).astype(np.float32), int(sr)
