"""Evaluation: a registry of metrics over Kaldi-style hypothesis/reference mappings.

======================  ==========  ==========  ============================================
metric                  hypothesis  reference   what
======================  ==========  ==========  ============================================
``wer``, ``cer``        text        text        error rates (jiwer), documented normalizer
``bleu``, ``chrf``      text        text        sacrebleu corpus scores
``intelligibility``     audio       text        recognizer transcripts -> WER/CER
``spk_sim``             audio       audio       Resemblyzer speaker-embedding cosine
``dnsmos``              audio       (none)      DNSMOS P.835 / P.808 quality
``mos``                 audio       (none)      a local MOS predictor (UTMOS ...), ``--mos-model``
``stoi``, ``pesq``      audio       audio       signal metrics for resynthesis
``mcd``, ``si_snr``     audio       audio       mel-cepstral distortion, scale-invariant SNR
======================  ==========  ==========  ============================================

Importing this package is cheap: the metric modules import their evaluators (jiwer, torch,
faster-whisper, resemblyzer, onnxruntime ...) only when a metric runs.

Example:
    >>> from speechlm.eval import METRICS, build_metric
    >>> "wer" in METRICS
    True
    >>> build_metric("wer")({"u1": "hello world"}, {"u1": "Hello, world!"}).summary["wer"]
    0.0
"""
from speechlm.eval.base import METRICS, RECOGNIZERS, Metric, MetricResult, build_metric, common_ids

# Importing a metric module registers its metrics (one registration line per metric).
from speechlm.eval import asr, duration, intelligibility, quality, recognizers, signal, speaker, textgen  # noqa: E402,F401
from speechlm.eval.asr import normalize_text  # noqa: E402
from speechlm.eval.intelligibility import intelligibility_floor  # noqa: E402

__all__ = [
    "METRICS", "RECOGNIZERS", "Metric", "MetricResult", "build_metric", "common_ids",
    "normalize_text", "intelligibility_floor",
]
