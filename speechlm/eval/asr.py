"""Word and character error rates (jiwer) with a documented text normalizer.

The default normalizer (:func:`normalize_text`), applied to hypothesis and reference alike:

1. Unicode NFKC normalization (full-width forms, ligatures, compatibility characters);
2. lowercase (``str.lower``);
3. every Unicode punctuation or symbol character (categories ``P*`` and ``S*``) becomes a
   space, except an apostrophe between two letters, which is kept (``don't`` stays one word,
   ``'quoted'`` loses its quotes, ``round-trip`` becomes ``round trip``);
4. runs of whitespace collapse to one space; leading and trailing spaces are removed.

Numbers are not spelled out and spellings are not unified: ``10`` and ``ten`` differ. Pass
``normalizer="none"`` to score raw text (only whitespace is collapsed).

Rates are percentages. The corpus rate is total errors over total reference words (or
characters), not the mean of per-utterance rates. CER counts characters of the normalized
text, spaces between words included.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Mapping

from speechlm.eval.base import METRICS, Metric, MetricResult

_APOS = "'\u2019"
_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalize text for WER/CER: NFKC, lowercase, punctuation/symbols to spaces, collapse spaces.

    Example:
        >>> normalize_text("  Hello, World!  It's  a ROUND-trip. ")
        "hello world it's a round trip"
    """
    text = unicodedata.normalize("NFKC", text).lower()
    out = []
    n = len(text)
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat[0] in "PS":
            if ch in _APOS and 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                out.append("'")
            else:
                out.append(" ")
        else:
            out.append(ch)
    return _WS.sub(" ", "".join(out)).strip()


def collapse_spaces(text: str) -> str:
    """Only collapse whitespace (the ``none`` normalizer)."""
    return _WS.sub(" ", text).strip()


NORMALIZERS: dict[str, Callable[[str], str]] = {"default": normalize_text, "none": collapse_spaces}


def get_normalizer(name: str) -> Callable[[str], str]:
    """Return the text normalizer called ``name`` (``default`` or ``none``)."""
    if name not in NORMALIZERS:
        raise KeyError(f"unknown text normalizer {name!r}; valid choices: {', '.join(NORMALIZERS)}")
    return NORMALIZERS[name]


def edit_counts(ref: str, hyp: str, unit: str = "word") -> dict[str, int]:
    """Substitutions, deletions, insertions, hits and reference length of one pair.

    ``unit`` is ``word`` (split on spaces) or ``char``. An empty reference counts every
    hypothesis unit as an insertion.
    """
    import jiwer

    ref_units = ref.split() if unit == "word" else list(ref)
    hyp_units = hyp.split() if unit == "word" else list(hyp)
    if not ref_units:
        return {"sub": 0, "del": 0, "ins": len(hyp_units), "hits": 0, "n_ref": 0}
    if not hyp_units:
        return {"sub": 0, "del": len(ref_units), "ins": 0, "hits": 0, "n_ref": len(ref_units)}
    out = jiwer.process_words(ref, hyp) if unit == "word" else jiwer.process_characters(ref, hyp)
    return {"sub": out.substitutions, "del": out.deletions, "ins": out.insertions,
            "hits": out.hits, "n_ref": len(ref_units)}


def error_rates(
    hyp: Mapping[str, str], ref: Mapping[str, str], ids: list[str], unit: str, normalizer: str = "default"
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Corpus summary and per-utterance records of WER (``unit="word"``) or CER (``"char"``)."""
    norm = get_normalizer(normalizer)
    rate = "wer" if unit == "word" else "cer"
    per_utt: dict[str, dict[str, Any]] = {}
    tot = {"sub": 0, "del": 0, "ins": 0, "hits": 0, "n_ref": 0}
    for utt in ids:
        r, h = norm(str(ref[utt])), norm(str(hyp[utt]))
        c = edit_counts(r, h, unit)
        for k in tot:
            tot[k] += c[k]
        errors = c["sub"] + c["del"] + c["ins"]
        per_utt[utt] = {
            rate: 100.0 * errors / c["n_ref"] if c["n_ref"] else (0.0 if errors == 0 else float("inf")),
            **c, "errors": errors, "ref": r, "hyp": h,
        }
    errors = tot["sub"] + tot["del"] + tot["ins"]
    n = tot["n_ref"]
    summary = {
        rate: 100.0 * errors / n if n else 0.0,
        "sub": 100.0 * tot["sub"] / n if n else 0.0,
        "del": 100.0 * tot["del"] / n if n else 0.0,
        "ins": 100.0 * tot["ins"] / n if n else 0.0,
        "n_utts": len(ids),
        "n_ref_" + ("words" if unit == "word" else "chars"): n,
        "sent_err": 100.0 * sum(1 for u in per_utt.values() if u["errors"]) / max(1, len(ids)),
    }
    return summary, per_utt


class _ErrorRate(Metric):
    unit = "word"
    hyp_kind = "text"
    ref_kind = "text"

    def __init__(self, normalizer: str = "default") -> None:
        get_normalizer(normalizer)  # fail early on a bad name
        self.normalizer = normalizer

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        summary, per_utt = error_rates(hyp, ref, ids, self.unit, self.normalizer)
        return MetricResult(self.name, summary, per_utt, key=self.name,
                            info={"normalizer": self.normalizer})


@METRICS.register("wer")
class WER(_ErrorRate):
    """Word error rate (%) of text hypotheses against reference text."""

    name = "wer"
    unit = "word"


@METRICS.register("cer")
class CER(_ErrorRate):
    """Character error rate (%) of text hypotheses against reference text."""

    name = "cer"
    unit = "char"
