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


def load_mos_model(path: str | os.PathLike, threads: int = 1):
    """A local MOS predictor as a callable ``wav [1, T] float32 -> score``: ``torch.export`` program
    (``.pt2``), TorchScript (other names; e.g. UTMOS exported with ``torch.jit.trace``) or ONNX
    (``.onnx``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: MOS model file not found (--mos-model takes a TorchScript or ONNX file)")
    if path.endswith(".onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda wav: float(np.asarray(sess.run(None, {name: wav})[0]).reshape(-1)[0])
    import torch

    try:
        model = torch.export.load(path).module() if path.endswith(".pt2") else torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError as e:
        raise ValueError(f"{path}: not a TorchScript or torch.export model ({e.args[0].splitlines()[0]}); "
                         f"export the predictor with torch.export (.pt2), torch.jit.trace or to ONNX") from None

    def run(wav: np.ndarray) -> float:
        with torch.inference_mode():
            return float(model(torch.from_numpy(wav)).reshape(-1)[0])

    return run


@METRICS.register("mos")
class LocalMOS(Metric):
    """Predicted MOS from a model file the user has (UTMOS or any predictor exported to
    TorchScript or ONNX that maps a mono waveform ``[1, T]`` at ``mos_sample_rate`` to a score)."""

    name = "mos"
    hyp_kind = "audio"
    ref_kind = None
    higher_is_better = True

    def __init__(self, mos_model: str | None = None, mos_sample_rate: int = 16000, threads: int = 0) -> None:
        if not mos_model:
            raise ValueError("metric 'mos' needs a local model file: speechlm score --mos-model PATH "
                             "(a TorchScript or ONNX MOS predictor, e.g. UTMOS)")
        self.path, self.sample_rate = str(mos_model), int(mos_sample_rate)
        self.model = load_mos_model(mos_model, int(threads) or len(os.sched_getaffinity(0)))

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        from tqdm import tqdm

        per_utt: dict[str, dict[str, Any]] = {}
        for utt in tqdm(ids, desc="mos", unit="utt", disable=len(ids) < 10):
            wav, _ = load_audio(hyp[utt], self.sample_rate, utt)
            if len(wav) == 0:
                logger.warning("mos: utterance %r (%s): empty audio", utt, spec_name(hyp[utt]))
                per_utt[utt] = {"mos": float("nan"), "error": "empty audio"}
                continue
            per_utt[utt] = {"mos": self.model(np.asarray(wav, np.float32)[None])}
        summary = {"mos": mean([p["mos"] for p in per_utt.values()]), "n_utts": len(ids)}
        return MetricResult(self.name, summary, per_utt, key="mos", higher_is_better=True,
                            info={"model": self.path, "sample_rate": self.sample_rate})
