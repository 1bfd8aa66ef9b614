"""SLU-F1: the entity metric of SLURP (Bastianelli et al., EMNLP 2020), as its official scorer defines it.

Entities are ``{"type": slot type, "filler": value}`` dicts. Per utterance, every predicted entity
is taken in order:

- if a gold entity of the same type is left, it is matched to the one whose filler is nearest
  (the first of equals) and removed from the gold list: the pair counts one true positive and
  the distance ``d`` in [0, 1+] of the two fillers as both a false positive and a false negative
  (an exact filler costs nothing, a wholly wrong one costs as much as a missed entity);
- otherwise it is a false positive (1).

Gold entities left unmatched are false negatives (1 each). Counts are kept per slot type and
summed over utterances (micro average: F1 from the summed counts; macro: the mean of per-type F1).

Two distances give two scores: **word-F1** uses the word error rate of the predicted filler
against the gold one (word edits / gold words; may exceed 1), **char-F1** the normalised
character Levenshtein distance (edits / the longer string's length). **SLU-F1** adds the two
metrics' counts, type by type, and computes F1 from the sums.

Example:
    >>> m = SLUF1()
    >>> m.add([{"type": "time", "filler": "seven am"}], [{"type": "time", "filler": "seven am"}])
    >>> round(m.scores()["slu_f1"], 3)
    1.0
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

Entity = Mapping[str, str]


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (substitutions, insertions, deletions, each cost 1) of two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def word_distance(gold: str, pred: str) -> float:
    """Word error rate of ``pred`` against ``gold`` (whitespace-split words).

    An empty gold filler (never in SLURP's data) gives 0 for an empty prediction, else 1."""
    g, p = gold.split(), pred.split()
    if not g:
        return 0.0 if not p else 1.0
    return levenshtein(g, p) / len(g)


def char_distance(gold: str, pred: str) -> float:
    """Character Levenshtein distance divided by the longer string's length (0 for two empty strings)."""
    n = max(len(gold), len(pred))
    return levenshtein(gold, pred) / n if n else 0.0


DISTANCES = {"word": word_distance, "char": char_distance}


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall and F1 from (possibly fractional) counts; 0 where undefined."""
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / (tp + fn) if tp + fn > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


@dataclass
class Counts:
    """True positives, false positives and false negatives per slot type."""

    tp: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fp: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fn: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def labels(self) -> set[str]:
        return set(self.tp) | set(self.fp) | set(self.fn)

    def f1(self, average: str = "micro") -> tuple[float, float, float]:
        if average == "macro":
            labels = sorted(self.labels())
            if not labels:
                return 0.0, 0.0, 0.0
            per = [prf(self.tp[t], self.fp[t], self.fn[t]) for t in labels]
            return tuple(sum(x[i] for x in per) / len(per) for i in range(3))  # type: ignore[return-value]
        return prf(sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values()))

    def __add__(self, other: "Counts") -> "Counts":
        out = Counts()
        for name in ("tp", "fp", "fn"):
            d = getattr(out, name)
            for src in (getattr(self, name), getattr(other, name)):
                for k, v in src.items():
                    d[k] += v
        return out


def _entities(entities: Iterable[Entity], where: str) -> list[tuple[str, str]]:
    out = []
    for e in entities:
        if "type" not in e or "filler" not in e:
            raise ValueError(f"{where}: an entity needs 'type' and 'filler' keys, got {dict(e)!r}")
        out.append((str(e["type"]), str(e["filler"])))
    return out


def span_distance_counts(counts: Counts, gold: Iterable[Entity], pred: Iterable[Entity], distance: str,
                         where: str = "entities") -> None:
    """Add one utterance's counts under ``distance`` (``word`` or ``char``) to ``counts``."""
    dist = DISTANCES[distance]
    left = _entities(gold, where + " (gold)")
    for ptype, pfill in _entities(pred, where + " (predicted)"):
        best, best_d = -1, float("inf")
        for i, (gtype, gfill) in enumerate(left):
            if gtype == ptype:
                d = dist(gfill, pfill)
                if d < best_d:
                    best, best_d = i, d
        if best < 0:
            counts.fp[ptype] += 1
            continue
        counts.tp[ptype] += 1
        counts.fp[ptype] += best_d
        counts.fn[ptype] += best_d
        left.pop(best)
    for gtype, _ in left:
        counts.fn[gtype] += 1


def span_counts(counts: Counts, gold: Iterable[Entity], pred: Iterable[Entity]) -> None:
    """Exact span F1 counts (type and filler equal): SLURP's ``span_f1``."""
    left = [(str(e["type"]), str(e["filler"])) for e in gold]
    for e in pred:
        key = (str(e["type"]), str(e["filler"]))
        if key in left:
            counts.tp[key[0]] += 1
            left.remove(key)
        else:
            counts.fp[key[0]] += 1
    for t, _ in left:
        counts.fn[t] += 1


class SLUF1:
    """Accumulates SLURP's entity metrics over utterances: span-F1, word-F1, char-F1 and SLU-F1."""

    def __init__(self, average: str = "micro") -> None:
        if average not in ("micro", "macro"):
            raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
        self.average = average
        self.span = Counts()
        self.by_distance = {d: Counts() for d in DISTANCES}

    def add(self, gold: Iterable[Entity], pred: Iterable[Entity], where: str = "entities") -> None:
        gold, pred = list(gold), list(pred)
        for name, counts in self.by_distance.items():  # first: it checks the entities' keys
            span_distance_counts(counts, gold, pred, name, where)
        span_counts(self.span, gold, pred)

    def scores(self) -> dict[str, float]:
        """``span_f1``, ``word_f1``, ``char_f1``, ``slu_f1`` (and ``slu_precision``/``slu_recall``), in [0, 1]."""
        slu = self.by_distance["word"] + self.by_distance["char"]
        p, r, f = slu.f1(self.average)
        return {"span_f1": self.span.f1(self.average)[2], "word_f1": self.by_distance["word"].f1(self.average)[2],
                "char_f1": self.by_distance["char"].f1(self.average)[2], "slu_f1": f,
                "slu_precision": p, "slu_recall": r}


def slu_f1(pairs: Iterable[tuple[Iterable[Entity], Iterable[Entity]]], average: str = "micro") -> dict[str, float]:
    """Scores of :class:`SLUF1` over (gold entities, predicted entities) pairs."""
    m = SLUF1(average)
    for i, (gold, pred) in enumerate(pairs):
        m.add(gold, pred, where=f"pair {i}")
    return m.scores()


__all__ = ["SLUF1", "slu_f1", "word_distance", "char_distance", "levenshtein", "prf", "Counts"]
