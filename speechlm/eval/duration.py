"""Length checks of generated speech: did the model stop, and is the duration plausible?

``duration``: per utterance, generated / reference duration; the headline is the share of
utterances whose ratio lies in ``[low, high]`` (0.7-1.4 by default). When the decode dir has a
``stopped`` file (``utt 1|0``, written by ``speechlm decode``: 1 when the model emitted its end
token before the length limit), the share that stopped is reported too.

The same checks on the speech span (first to last 20 ms frame within ``trim_db`` of the loudest,
in both files) catch outputs whose length is right but whose speech is not: a model that speaks
too fast and pads with silence passes the whole-file ratio, not the span ratio.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from speechlm.eval.audio import load_audio
from speechlm.eval.base import METRICS, Metric, MetricResult, mean


def speech_span(wav: np.ndarray, sr: int, trim_db: float = 40.0, frame_s: float = 0.02) -> float:
    """Seconds from the first to the last frame whose energy is within ``trim_db`` of the loudest
    frame (0 for silence)."""
    n = max(1, int(sr * frame_s))
    m = len(wav) // n
    if m == 0:
        return 0.0
    energy = (np.asarray(wav[: m * n], dtype=np.float64).reshape(m, n) ** 2).mean(1)
    if energy.max() <= 0:
        return 0.0
    loud = np.flatnonzero(10 * np.log10(energy / energy.max() + 1e-30) > -trim_db)
    return (loud[-1] - loud[0] + 1) * n / sr


@METRICS.register("duration")
class Duration(Metric):
    name = "duration"
    hyp_kind = "audio"
    ref_kind = "audio"

    def __init__(self, decode_dir: str | None = None, low: float = 0.7, high: float = 1.4,
                 trim_db: float = 40.0) -> None:
        self.decode_dir, self.low, self.high, self.trim_db = decode_dir, low, high, trim_db

    def _stopped(self) -> dict[str, bool] | None:
        path = Path(self.decode_dir) / "stopped" if self.decode_dir else None
        if path is None or not path.is_file():
            return None
        from speechlm.eval.sources import read_kaldi_map

        return {u: v.strip() == "1" for u, v in read_kaldi_map(path).items()}

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        stopped = self._stopped()
        per_utt: dict[str, dict[str, Any]] = {}
        for utt in ids:
            h, hsr = load_audio(hyp[utt], utt=utt)
            r, rsr = load_audio(ref[utt], utt=utt)
            hyp_s, ref_s = len(h) / hsr, len(r) / rsr
            ratio = hyp_s / ref_s if ref_s > 0 else float("nan")
            hyp_sp, ref_sp = speech_span(h, hsr, self.trim_db), speech_span(r, rsr, self.trim_db)
            sp_ratio = hyp_sp / ref_sp if ref_sp > 0 else float("nan")
            row = {"hyp_s": round(hyp_s, 3), "ref_s": round(ref_s, 3), "ratio": round(ratio, 3),
                   "in_range": self.low <= ratio <= self.high,
                   "speech_ratio": round(sp_ratio, 3), "speech_in_range": self.low <= sp_ratio <= self.high,
                   # distance from 1 on a log scale: half and double length are equally bad
                   "log_ratio_abs": abs(math.log(ratio)) if ratio > 0 else float("inf")}
            if stopped is not None:
                row["stopped"] = stopped.get(utt)
            per_utt[utt] = row
        ratios = sorted(r["ratio"] for r in per_utt.values() if math.isfinite(r["ratio"]))
        summary = {"in_range_pct": 100.0 * mean([float(r["in_range"]) for r in per_utt.values()]),
                   "speech_in_range_pct": 100.0 * mean([float(r["speech_in_range"]) for r in per_utt.values()])}
        if stopped is not None:
            summary["stopped_pct"] = 100.0 * mean([float(bool(r["stopped"])) for r in per_utt.values()])
        summary["ratio_median"] = ratios[len(ratios) // 2] if ratios else float("nan")
        summary["ratio_mean"] = mean(ratios)
        spans = sorted(r["speech_ratio"] for r in per_utt.values() if math.isfinite(r["speech_ratio"]))
        summary["speech_ratio_median"] = spans[len(spans) // 2] if spans else float("nan")
        summary["n_utts"] = len(ids)
        return MetricResult(self.name, summary, per_utt, key="log_ratio_abs", higher_is_better=False,
                            info={"range": f"{self.low}-{self.high}",
                                  "speech span": f"20 ms frames within {self.trim_db} dB of the loudest",
                                  "stopped": "from decode dir" if stopped is not None else "unknown"})
