"""Answers that restate what the tools said: the texts an answer turn may take.

Every reference answer (:mod:`speechlm.agent.generator`) is one of: the result texts of the
request's calls joined by ``and``, the error told to the user (``sorry, <error>``), a question
back (``ask_back``) or ``done``. A model that restates a result word by word still slips on what
it copies (``ten forty am`` -> ``ten forty five am``, ``the reading list has toothpaste`` -> ``...
has dentist``) and the tokenizer's own spelling of ``mary's`` comes back as ``mary ' s``. The
agent loop's ``valid_answers`` decodes an answer as one of :func:`answer_options` (a token trie,
:meth:`speechlm.agent.grammar.CallGrammar.answer_trie`): the model still chooses which results it
restates, in order, and whether it reports an error or asks back, but it cannot rewrite them;
:func:`canonical_answer` then gives the option's own text.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Optional

from speechlm.agent.calls import ANSWER_PREFIX, normalize_words, parse_result

JOIN = " and "
NO_RESULT = "done"
SORRY = "sorry, "
MAX_SUBSETS = 5  # up to this many results: any of them in order; more: each alone or all


def ask_backs() -> list[str]:
    """Every question back the reference dialogues ask (one per argument of every tool)."""
    from speechlm.agent.generator import ask_back
    from speechlm.agent.tools import TOOLS

    args = {a for n in TOOLS.names() for a in TOOLS.get(n).parameters.get("properties", {})}
    return sorted({ask_back(a) for a in args})


def answer_options(history: Iterable[dict], questions: Iterable[str] = ()) -> list[str]:
    """The answers a turn may give after ``history`` (the loop's turns, ``{"role", "text"}``): the
    results of the tool turns since the last answer joined in order (any of them), ``sorry, <error>``
    for each error among them, ``questions`` (:func:`ask_backs`) and ``done``; no duplicates."""
    turns = list(history)
    start = max((i + 1 for i, t in enumerate(turns)
                 if t["role"] == "assistant" and t["text"].startswith(ANSWER_PREFIX)), default=0)
    oks: list[str] = []
    errors: list[str] = []
    for t in turns[start:]:
        if t["role"] == "tool":
            ok, text = parse_result(t["text"])
            (oks if ok else errors).append(text)
    if len(oks) <= MAX_SUBSETS:
        joined = [JOIN.join(c) for n in range(len(oks), 0, -1) for c in combinations(oks, n)]
    else:
        joined = [JOIN.join(oks), *oks]
    out = [*joined, *(SORRY + e for e in errors), *questions, NO_RESULT]
    return list(dict.fromkeys(normalize_words(o) for o in out if o))


def _squashed(text: str) -> str:
    return "".join(normalize_words(text).split())


def canonical_answer(text: str, options: Iterable[str]) -> Optional[str]:
    """The option that ``text`` spells (spaces aside: a tokenizer's ``mary ' s`` is ``mary's``), or None."""
    key = _squashed(text)
    return next((o for o in options if _squashed(o) == key), None)


__all__ = ["answer_options", "ask_backs", "canonical_answer"]
