"""Signal metrics for codec resynthesis: STOI, PESQ, mel-cepstral distortion, SI-SNR.

These compare a hypothesis waveform with the reference waveform of the *same* utterance, sample
by sample (MCD: frame by frame, DTW-aligned by default), so they suit codec resynthesis and
vocoders, not free-running TTS. The hypothesis is resampled to the reference rate (PESQ: both
to 16 kHz wide-band or 8 kHz narrow-band) and both are trimmed to the shorter length.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np

from speechlm.data.audio import resample
from speechlm.eval.audio import align_lengths, load_audio, spec_name
from speechlm.eval.base import METRICS, Metric, MetricResult, mean

logger = logging.getLogger(__name__)


class AudioPairMetric(Metric):
    """Base of metrics over (hypothesis wav, reference wav) pairs: subclasses implement ``score``."""

    hyp_kind = "audio"
    ref_kind = "audio"
    #: rate both signals are brought to; None: the reference's rate
    rate: int | None = None

    def score(self, hyp: np.ndarray, ref: np.ndarray, sr: int) -> float:
        raise NotImplementedError

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        from tqdm import tqdm

        per_utt: dict[str, dict[str, Any]] = {}
        for utt in tqdm(ids, desc=self.name, unit="utt", disable=len(ids) < 20):
            r, sr = load_audio(ref[utt], self.rate, utt)
            h, hsr = load_audio(hyp[utt], None, utt)
            h = resample(h, hsr, sr)
            h, r = align_lengths(h, r, utt)
            try:
                value = float(self.score(h, r, sr))
                per_utt[utt] = {self.name: value}
            except Exception as e:  # e.g. PESQ finds no speech in a silent output
                logger.warning("%s: utterance %r (%s) failed: %s", self.name, utt, spec_name(hyp[utt]), e)
                per_utt[utt] = {self.name: float("nan"), "error": str(e)}
        values = [p[self.name] for p in per_utt.values()]
        summary = {self.name: mean(values), "n_utts": len(ids),
                   "n_failed": sum(1 for v in values if not math.isfinite(v))}
        return MetricResult(self.name, summary, per_utt, key=self.name,
                            higher_is_better=self.higher_is_better, info=self.describe())

    def describe(self) -> dict[str, Any]:
        return {}


@METRICS.register("stoi")
class STOI(AudioPairMetric):
    """Short-time objective intelligibility (pystoi; 0-1, higher is better)."""

    name = "stoi"
    higher_is_better = True

    def __init__(self, extended: bool = False) -> None:
        self.extended = bool(extended)

    def score(self, hyp: np.ndarray, ref: np.ndarray, sr: int) -> float:
        from pystoi import stoi

        return stoi(ref.astype(np.float64), hyp.astype(np.float64), sr, extended=self.extended)

    def describe(self) -> dict[str, Any]:
        return {"extended": self.extended}


@METRICS.register("pesq")
class PESQ(AudioPairMetric):
    """PESQ (ITU-T P.862; MOS-LQO, about 1-4.6): ``wb`` at 16 kHz or ``nb`` at 8 kHz."""

    name = "pesq"
    higher_is_better = True

    def __init__(self, pesq_mode: str = "wb") -> None:
        if pesq_mode not in ("wb", "nb"):
            raise ValueError(f"PESQ mode must be 'wb' (16 kHz) or 'nb' (8 kHz), got {pesq_mode!r}")
        self.mode = pesq_mode
        self.rate = 16000 if pesq_mode == "wb" else 8000

    def score(self, hyp: np.ndarray, ref: np.ndarray, sr: int) -> float:
        from pesq import pesq

        return pesq(sr, ref, hyp, self.mode)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate}


# All-pass warping constants that approximate the mel scale at common rates (SPTK's table).
_MEL_ALPHA = {8000: 0.312, 11025: 0.357, 16000: 0.41, 22050: 0.455, 24000: 0.466,
              32000: 0.504, 44100: 0.544, 48000: 0.554}


def mel_alpha(sr: int) -> float:
    """All-pass constant for ``sr`` (nearest tabulated rate)."""
    return _MEL_ALPHA[min(_MEL_ALPHA, key=lambda r: abs(r - sr))]


def mel_cepstrum(wav: np.ndarray, sr: int, order: int = 24, frame_ms: float = 25.0,
                 hop_ms: float = 5.0) -> np.ndarray:
    """Mel cepstra ``[frames, order + 1]`` of a signal: the real cepstrum of the log power
    spectrum resampled on an all-pass (mel-like) warped frequency axis.

    This frequency-warping estimate follows the definition of the mel cepstrum rather than
    SPTK's iterative ``mcep`` fit; values are close but not identical to SPTK-based MCD.
    """
    n_win = int(sr * frame_ms / 1000)
    hop = int(sr * hop_ms / 1000)
    n_fft = 1 << (n_win - 1).bit_length()
    if len(wav) < n_win:
        wav = np.pad(wav, (0, n_win - len(wav)))
    n_frames = 1 + (len(wav) - n_win) // hop
    idx = np.arange(n_win)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = wav[idx] * np.hanning(n_win)[None, :].astype(np.float32)
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2
    log_spec = np.log(np.maximum(power, 1e-10))
    # Uniform grid on the warped axis, mapped back to linear frequency (inverse warp = -alpha).
    a = -mel_alpha(sr)
    w_warp = np.linspace(0.0, np.pi, n_fft // 2 + 1)
    w_lin = w_warp + 2.0 * np.arctan(a * np.sin(w_warp) / (1.0 - a * np.cos(w_warp)))
    lin_grid = np.linspace(0.0, np.pi, n_fft // 2 + 1)
    warped = np.stack([np.interp(w_lin, lin_grid, row) for row in log_spec])
    # log|X| = 0.5 * log power; the cepstrum of the (even) log magnitude is its inverse real FFT.
    cep = np.fft.irfft(0.5 * warped, n_fft, axis=1)[:, : order + 1]
    cep[:, 1:] *= 2.0
    return cep


def mcd(hyp: np.ndarray, ref: np.ndarray, sr: int, align: str = "dtw", order: int = 24) -> float:
    """Mel-cepstral distortion in dB over coefficients 1..order (energy term c0 excluded):
    ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)``, averaged over aligned frames.

    ``align="dtw"`` aligns frames by dynamic time warping (librosa) on the Euclidean cepstral
    distance; ``"none"`` compares frame ``t`` with frame ``t``.
    """
    ch = mel_cepstrum(hyp, sr, order)[:, 1:]
    cr = mel_cepstrum(ref, sr, order)[:, 1:]
    if align == "dtw":
        import librosa

        cost = np.sqrt(((cr[:, None, :] - ch[None, :, :]) ** 2).sum(-1))
        _, path = librosa.sequence.dtw(C=cost)
        diff = cr[path[:, 0]] - ch[path[:, 1]]
    elif align == "none":
        n = min(len(ch), len(cr))
        diff = cr[:n] - ch[:n]
    else:
        raise ValueError(f"MCD alignment must be 'dtw' or 'none', got {align!r}")
    per_frame = np.sqrt(2.0 * (diff ** 2).sum(axis=1))
    return float(10.0 / np.log(10.0) * per_frame.mean())


@METRICS.register("mcd")
class MCD(AudioPairMetric):
    """Mel-cepstral distortion (dB, lower is better), see :func:`mcd`."""

    name = "mcd"
    higher_is_better = False

    def __init__(self, mcd_align: str = "dtw", mcd_order: int = 24) -> None:
        if mcd_align not in ("dtw", "none"):
            raise ValueError(f"MCD alignment must be 'dtw' or 'none', got {mcd_align!r}")
        self.align, self.order = mcd_align, int(mcd_order)

    def score(self, hyp: np.ndarray, ref: np.ndarray, sr: int) -> float:
        return mcd(hyp, ref, sr, self.align, self.order)

    def describe(self) -> dict[str, Any]:
        return {"align": self.align, "order": self.order}


def si_snr(hyp: np.ndarray, ref: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-noise ratio in dB (zero-mean signals, projection onto ``ref``)."""
    h = hyp.astype(np.float64) - hyp.mean()
    r = ref.astype(np.float64) - ref.mean()
    target = (h @ r) / (r @ r + eps) * r
    noise = h - target
    return float(10.0 * np.log10((target @ target + eps) / (noise @ noise + eps)))


@METRICS.register("si_snr")
class SISNR(AudioPairMetric):
    """Scale-invariant SNR (dB, higher is better), see :func:`si_snr`."""

    name = "si_snr"
    higher_is_better = True

    def score(self, hyp: np.ndarray, ref: np.ndarray, sr: int) -> float:
        return si_snr(hyp, ref)
