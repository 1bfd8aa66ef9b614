"""A word n-gram model of the requests, to pick among a recognizer's hypotheses.

Whisper tiny.en writes ``check the best times to manchester`` for ``check the bus times ...`` and
``turn off the smart look``: one word that carries the intent, heard as a word of general
English. Its beam holds the right words more often than its first choice does (recipe README:
8-best oracle WER 23% against 32% on the test requests). A model of how users speak to the home
assistant, trained on the training requests' words, re-ranks the beam: score = the recognizer's
log probability of the hypothesis + ``weight`` x this model's (:func:`rescore`).

The model is an interpolated absolute-discounting n-gram (discount 0.75 at every order) over an
add-one unigram with one slot for every unseen word, so that a hypothesis of words users never
said costs more than one of their words. Saved as JSON (counts by context).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from speechlm.utils.fileio import atomic_open

BOS, EOS = "<s>", "</s>"


class WordLM:
    """Counts of ``order``-grams and their lower orders; :meth:`logprob` of a sentence."""

    def __init__(self, order: int = 3, discount: float = 0.75) -> None:
        if order < 1:
            raise ValueError(f"word LM: order must be >= 1, got {order}")
        if not 0 < discount < 1:
            raise ValueError(f"word LM: discount must be in (0, 1), got {discount}")
        self.order, self.discount = order, discount
        # counts[k][context of k words] -> Counter of the next word (k = 0: the unigram counts)
        self.counts: list[dict[tuple[str, ...], Counter]] = [defaultdict(Counter) for _ in range(order)]
        self._totals: list[dict[tuple[str, ...], int]] = []

    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 3, discount: float = 0.75) -> "WordLM":
        """Count the words of ``sentences`` (one request each, words split on white space)."""
        lm = cls(order, discount)
        n = 0
        for text in sentences:
            words = [BOS] * (order - 1) + text.split() + [EOS]
            for i in range(order - 1, len(words)):
                for k in range(order):
                    lm.counts[k][tuple(words[i - k : i])][words[i]] += 1
            n += 1
        if not n:
            raise ValueError("word LM: no sentences to train on")
        lm._index()
        return lm

    def _index(self) -> None:
        self._totals = [{ctx: sum(c.values()) for ctx, c in table.items()} for table in self.counts]
        unigrams = self.counts[0][()]
        self._n, self._v = sum(unigrams.values()), len(unigrams) + 1  # + the slot of unseen words

    def prob(self, word: str, context: Sequence[str]) -> float:
        """P(word | the last ``order - 1`` words of ``context``), ``<s>``-padded."""
        ctx = ([BOS] * (self.order - 1) + list(context))[-(self.order - 1):] if self.order > 1 else []
        p = (self.counts[0][()].get(word, 0) + 1) / (self._n + self._v)
        for k in range(1, self.order):
            c = tuple(ctx[len(ctx) - k :])
            total = self._totals[k].get(c)
            if not total:
                break  # an unseen context: its longer ones are unseen too
            nexts = self.counts[k][c]
            p = max(nexts.get(word, 0) - self.discount, 0) / total + self.discount * len(nexts) / total * p
        return p

    def logprob(self, text: str) -> float:
        """Natural log probability of the sentence ``text`` (its end included)."""
        words = text.split() + [EOS]
        return sum(math.log(self.prob(w, words[:i])) for i, w in enumerate(words))

    def save(self, path: str | os.PathLike) -> None:
        """JSON: order, discount and the counts by order and context (written atomically)."""
        data = {"order": self.order, "discount": self.discount,
                "counts": [{" ".join(ctx): dict(c) for ctx, c in table.items()} for table in self.counts]}
        with atomic_open(path) as f:
            json.dump(data, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordLM":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            lm = cls(int(data["order"]), float(data["discount"]))
            if len(data["counts"]) != lm.order:
                raise ValueError(f"{len(data['counts'])} count tables for order {lm.order}")
            for k, table in enumerate(data["counts"]):
                for ctx, nexts in table.items():
                    lm.counts[k][tuple(ctx.split())] = Counter({w: int(n) for w, n in nexts.items()})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a word LM written by `speechlm agent train-lm` ({e})") from None
        lm._index()
        return lm


def rescore(hyps: Sequence[tuple[str, float]], lm: WordLM, weight: float) -> str:
    """The best of ``hyps`` (words, the recognizer's log probability) by that log probability +
    ``weight`` x the LM's; empty hypotheses lose to any other; "" when there is none."""
    scored = [(lp + weight * lm.logprob(words), words) for words, lp in hyps if words.strip()]
    return max(scored, key=lambda s: s[0])[1] if scored else ""
