"""Reference-free speech quality: DNSMOS (P.835 SIG/BAK/OVRL and P.808 MOS) via ``speechmos``.

The ONNX models ship inside the ``speechmos`` wheel and run offline with onnxruntime on CPU
(all cores by default). Audio is resampled to 16 kHz; clips shorter than the model's 9.01 s
window are tiled to fill it (speechmos's convention). Scores are on a 1-5 scale.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from speechlm.eval.audio import load_audio, spec_name
from speechlm.eval.base import METRICS, Metric, MetricResult, mean

logger = logging.getLogger(__name__)

_MODELS: dict[tuple[bool, int], Any] = {}


def dnsmos_model(personalized: bool = False, threads: int = 1) -> Any:
    """speechmos's DNSMOS scorer with onnxruntime sessions limited to ``threads`` (cached)."""
    key = (personalized, threads)
    if key not in _MODELS:
        import onnxruntime as ort
        import speechmos.dnsmos as dn

        root = os.path.dirname(os.path.abspath(dn.__file__))
        primary = os.path.join(root, "pdnsmos_models" if personalized else "dnsmos_models", "sig_bak_ovr.onnx")
        p808 = os.path.join(root, "dnsmos_models", "model_v8.onnx")
        for path in (primary, p808):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: DNSMOS model missing from the speechmos package; reinstall it")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        model = dn.DNSMOS.__new__(dn.DNSMOS)  # its __init__ would open sessions on every core
        model.primary_model_path = primary
        model.onnx_sess = ort.InferenceSession(primary, opts, providers=["CPUExecutionProvider"])
        model.p808_onnx_sess = ort.InferenceSession(p808, opts, providers=["CPUExecutionProvider"])
        _MODELS[key] = model
    return _MODELS[key]


def dnsmos(wav: np.ndarray, personalized: bool = False, threads: int = 1) -> dict[str, float]:
    """DNSMOS of one 16 kHz mono signal: ``{"ovrl", "sig", "bak", "p808"}``."""
    if len(wav) == 0:
        raise ValueError("empty audio")
    wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
    out = dnsmos_model(personalized, threads)(wav, 16000, personalized)
    return {"ovrl": float(out["ovrl_mos"]), "sig": float(out["sig_mos"]),
            "bak": float(out["bak_mos"]), "p808": float(out["p808_mos"])}


@METRICS.register("dnsmos")
class DNSMOS(Metric):
    """DNSMOS overall quality (1-5) of generated speech; no reference needed."""

    name = "dnsmos"
    hyp_kind = "audio"
    ref_kind = None
    higher_is_better = True

    def __init__(self, personalized: bool = False, threads: int = 0) -> None:
        # 0: every core this process may use
        self.personalized, self.threads = bool(personalized), int(threads) or len(os.sched_getaffinity(0))

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        from tqdm import tqdm

        per_utt: dict[str, dict[str, Any]] = {}
        for utt in tqdm(ids, desc="dnsmos", unit="utt", disable=len(ids) < 10):
            wav, _ = load_audio(hyp[utt], 16000, utt)
            try:
                per_utt[utt] = dnsmos(wav, self.personalized, self.threads)
            except ValueError as e:
                logger.warning("dnsmos: utterance %r (%s): %s", utt, spec_name(hyp[utt]), e)
                per_utt[utt] = {"ovrl": float("nan"), "error": str(e)}
        summary = {"ovrl": mean([p.get("ovrl") for p in per_utt.values()])}
        for k in ("sig", "bak", "p808"):
            summary[k] = mean([p.get(k) for p in per_utt.values()])
        summary["n_utts"] = len(ids)
        return MetricResult(self.name, summary, per_utt, key="ovrl", higher_is_better=True,
                            info={"personalized": self.personalized})
