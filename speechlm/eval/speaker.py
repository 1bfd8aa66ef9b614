"""Speaker similarity: cosine of speaker embeddings of generated and reference speech.

The embedding model is Resemblyzer's pretrained GE2E speaker encoder (shipped in its wheel,
256-dim, 16 kHz input after Resemblyzer's own loudness normalization and silence trimming).
Embeddings are L2-normalized, so the cosine is their dot product (-1..1, higher is more
similar). The reference is the ground-truth audio of the same utterance or a speaker prompt.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from speechlm.eval.audio import load_audio, spec_name
from speechlm.eval.base import METRICS, Metric, MetricResult, mean

logger = logging.getLogger(__name__)

_ENCODERS: dict[str, Any] = {}


def _resemblyzer() -> Any:
    """Import resemblyzer (it uses a deprecated scipy path; the warning is not ours to fix)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
    except ImportError as e:
        raise ImportError("speaker similarity needs resemblyzer: "
                          "pip install --no-deps resemblyzer && pip install librosa webrtcvad-wheels") from e
    return resemblyzer


def speaker_encoder(device: str = "cpu") -> Any:
    """Resemblyzer's ``VoiceEncoder`` on ``device`` (loaded once per process)."""
    if device not in _ENCODERS:
        _ENCODERS[device] = _resemblyzer().VoiceEncoder(device=device, verbose=False)
    return _ENCODERS[device]


def speaker_embedding(spec: Any, device: str = "cpu", trim_silence: bool = True) -> np.ndarray:
    """The L2-normalized speaker embedding of one audio spec."""
    wav, _ = load_audio(spec, 16000)
    if trim_silence:
        wav = _resemblyzer().preprocess_wav(wav, source_sr=16000)
    if len(wav) == 0:
        raise ValueError(f"{spec_name(spec)}: no speech left after silence trimming")
    return speaker_encoder(device).embed_utterance(wav)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@METRICS.register("spk_sim")
class SpeakerSimilarity(Metric):
    """Mean cosine similarity (-1..1) of Resemblyzer embeddings, generated vs reference speech."""

    name = "spk_sim"
    hyp_kind = "audio"
    ref_kind = "audio"
    higher_is_better = True

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        import torch
        from tqdm import tqdm

        per_utt: dict[str, dict[str, Any]] = {}
        with torch.inference_mode():
            for utt in tqdm(ids, desc="spk_sim", unit="utt", disable=len(ids) < 10):
                try:
                    sim = cosine(speaker_embedding(hyp[utt], self.device), speaker_embedding(ref[utt], self.device))
                    per_utt[utt] = {"spk_sim": sim}
                except ValueError as e:
                    logger.warning("spk_sim: utterance %r: %s", utt, e)
                    per_utt[utt] = {"spk_sim": float("nan"), "error": str(e)}
        values = [p["spk_sim"] for p in per_utt.values()]
        summary = {"spk_sim": mean(values), "n_utts": len(ids),
                   "n_failed": sum(1 for v in values if not np.isfinite(v))}
        return MetricResult(self.name, summary, per_utt, key="spk_sim", higher_is_better=True,
                            info={"model": "resemblyzer GE2E"})
