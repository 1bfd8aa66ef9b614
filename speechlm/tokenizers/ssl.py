"""Discrete units: k-means cluster ids of frame features (HuBERT/WavLM/wav2vec2 layers, the Whisper
encoder, or MFCC).

Train the k-means model first (``speechlm train-kmeans``), then point the tokenizer at its dir;
the feature settings come from the dir, so encoding always matches training::

    speechlm train-kmeans --data-dir data/train --out-dir exp/km500 --n-clusters 500 \\
        --model-dir /models/hubert-base --layer 6
    # tokenizers.yaml
    ssl: {type: ssl, kmeans: exp/km500}

One stream of ``n_clusters`` ids at 50 Hz. Units of ``mfcc``/``logmel`` features decode to a
rough waveform (centroid spectra, Griffin-Lim phase); units of an SSL model have no vocoder
here, so they decode only inside ``codec_ssl`` (whose codec streams carry the audio).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, AudioTokenizer
from speechlm.tokenizers.kmeans import SPECTRAL, FrameFeatures, KMeansModel

log = logging.getLogger(__name__)


@TOKENIZERS.register("ssl")
class SSLUnitTokenizer(AudioTokenizer):
    """k-means units of frame features.

    Args:
        kmeans: dir written by ``speechlm train-kmeans``.
        model_dir: where the SSL model is now, if it moved since training (same weights).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    path_options = ("kmeans", "model_dir")
    resample_kernel = "float64"  # what its archives were made with

    def __init__(self, kmeans: str, model_dir: str | None = None, device: str = "cpu") -> None:
        self.kmeans_dir, self.device = str(kmeans), device
        self.km = KMeansModel.load(kmeans)
        spec = dict(self.km.spec)
        if model_dir is not None:
            spec["model_dir"] = model_dir
        self.features = FrameFeatures(spec["feature"], spec.get("model_dir"), int(spec.get("layer", 6)), device)
        if self.features.dim != self.km.centroids.shape[1]:
            raise ValueError(f"ssl: features of {spec} have {self.features.dim} dims but the centroids in "
                             f"{kmeans} have {self.km.centroids.shape[1]}; wrong model_dir or layer?")
        self.sample_rate = self.features.sample_rate
        self._inverse = None

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.km.n_clusters]

    @property
    def frame_rate(self) -> float:
        return self.features.frame_rate


    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        feats = self.features(self.prepare(wav, sample_rate))
        return self.km.assign(feats).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Units -> waveform through the centroid spectra (``mfcc``/``logmel`` features only)."""
        import torch

        if self.features.feature in ("hf", "whisper"):
            raise NotImplementedError(
                f"ssl: units of an SSL or Whisper model ({self.features.model_dir or 'bundled'}) cannot be turned back into audio "
                f"without a unit vocoder; use a codec_ssl tokenizer, whose codec streams decode")
        ids = np.asarray(tokens).reshape(len(tokens), -1)[:, 0]
        feats = self.km.centroids[ids] * self.km.std + self.km.mean  # [frames, dim]
        c = SPECTRAL
        x = torch.from_numpy(feats.astype(np.float32))
        if self.features.feature == "mfcc":
            import torchaudio.functional as AF

            dct = AF.create_dct(c["n_mfcc"], c["n_mels"], norm="ortho")  # [n_mels, n_mfcc]
            x = x @ dct.T  # back to log-mel (high quefrencies lost)
        mel = torch.exp(x).T  # [n_mels, frames], power
        if self._inverse is None:
            import torchaudio

            self._inverse = (
                torchaudio.transforms.InverseMelScale(c["n_fft"] // 2 + 1, c["n_mels"], c["sample_rate"]),
                torchaudio.transforms.GriffinLim(n_fft=c["n_fft"], hop_length=c["hop"], n_iter=32, power=2.0),
            )
        inv_mel, griffin_lim = self._inverse
        torch.manual_seed(0)  # Griffin-Lim starts from random phases
        with torch.inference_mode():
            wav = griffin_lim(inv_mel(mel).clamp_min(0))
        wav = wav.numpy().astype(np.float32)
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        return wav / peak * 0.5 if peak > 0.5 else wav

    def files(self) -> list[Path]:
        d = Path(self.kmeans_dir)
        return [d / n for n in ("kmeans.yaml", "centroids.npy", "norm.npz")]
