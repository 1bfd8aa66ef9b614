"""Spectrogram panels of one utterance (reference, resynthesis, model outputs) in one PNG, one
panel under the other on a shared time axis, for a person to look at (and listen alongside).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def log_spectrogram(wav: np.ndarray, sample_rate: int, win_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """Log-magnitude STFT ``[freq bins, frames]`` in dB (Hann window), floored 80 dB below its peak."""
    n = int(sample_rate * win_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) < n:
        wav = np.pad(wav, (0, n - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, n)[::hop] * np.hanning(n)
    mag = np.abs(np.fft.rfft(frames, axis=1)).T
    db = 20 * np.log10(mag + 1e-9)
    return np.maximum(db, db.max() - 80.0)


def plot_panels(png: str | Path, panels: list[tuple[str, np.ndarray]], sample_rate: int, title: str = "") -> Path:
    """Write ``png``: one spectrogram per ``(label, waveform)`` panel (all at ``sample_rate``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    longest = max(len(w) for _, w in panels) / sample_rate
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.9 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, wav) in zip(axes[:, 0], panels):
        spec = log_spectrogram(wav, sample_rate)
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(wav) / sample_rate, 0, sample_rate / 2000))
        ax.set_xlim(0, longest)
        ax.set_ylabel("kHz")
        ax.set_title(label, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


__all__ = ["log_spectrogram", "plot_panels"]
