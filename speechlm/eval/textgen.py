"""BLEU and chrF (sacrebleu) for tasks that generate text from text (translation, text LM).

Scores are sacrebleu's defaults (BLEU: 13a tokenization, 4-grams, exponential smoothing for
sentence scores; chrF: character 6-grams, beta 2), on 0-100 scales. The corpus figure is
sacrebleu's corpus score (pooled n-gram statistics), not the mean of sentence scores. Text is
scored as written (case and punctuation matter), the usual convention for these metrics;
``lowercase=True`` lowercases both sides.
"""
from __future__ import annotations

from typing import Any, Mapping

from speechlm.eval.base import METRICS, Metric, MetricResult, mean


class _SacreMetric(Metric):
    hyp_kind = "text"
    ref_kind = "text"
    higher_is_better = True

    def __init__(self, lowercase: bool = False) -> None:
        self.lowercase = bool(lowercase)

    def _scorer(self, sentence: bool):
        raise NotImplementedError

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        scorer, sent_scorer = self._scorer(sentence=False), self._scorer(sentence=True)
        hyps = [str(hyp[u]).strip() for u in ids]
        refs = [str(ref[u]).strip() for u in ids]
        per_utt = {}
        for u, h, r in zip(ids, hyps, refs):
            per_utt[u] = {self.name: float(sent_scorer.sentence_score(h, [r]).score), "ref": r, "hyp": h}
        corpus = scorer.corpus_score(hyps, [refs])
        summary = {self.name: float(corpus.score), "sent_mean": mean([p[self.name] for p in per_utt.values()]),
                   "n_utts": len(ids)}
        return MetricResult(self.name, summary, per_utt, key=self.name, higher_is_better=True,
                            info={"signature": str(scorer.get_signature())})


@METRICS.register("bleu")
class BLEU(_SacreMetric):
    """Corpus BLEU (0-100) with sentence BLEU per utterance."""

    name = "bleu"

    def _scorer(self, sentence: bool):
        from sacrebleu.metrics import BLEU as _BLEU

        # effective_order only for sentences: a short sentence has no 4-grams.
        return _BLEU(lowercase=self.lowercase, effective_order=sentence)


@METRICS.register("chrf")
class ChrF(_SacreMetric):
    """Corpus chrF (0-100) with sentence chrF per utterance."""

    name = "chrf"

    def _scorer(self, sentence: bool):
        from sacrebleu.metrics import CHRF

        return CHRF(lowercase=self.lowercase)
