"""Tying a call's argument values to what the user said.

A parser that has never seen a slot value tends to write the nearest value it knows
(``garage`` -> ``garden``, ``ten forty am`` -> ``ten forty five am``): a fluent value that the
request does not hold. Slot values are spans of what was said (SLURP annotates spans) or of what
a tool returned (a context transition copies an event from the calendar), so:

- while decoding (the agent loop's ``copy_values``), a value may hold
  only the words of what the user said and of what the tools returned, and a time, a date or a
  number (:data:`CLOSED_ARGS`) those of :func:`closed_words` too (numbers, days, ``before`` and
  ``after``: an alarm half an hour before a ten am meeting is at ``nine thirty am``, which nobody
  said; a word is no number: ``explain the word democracy`` is not ``six``);
- after decoding (:func:`ground_call`), a value found in neither (a time relative to another,
  ``half an hour before ten am``, is found when each side is) is replaced by the closest span
  of the user's words when that span is close enough (character edit distance over the longer
  length <= ``max_distance``) and reads like a value: no function word or filler at either end
  (``to my`` is no date, ``shop in`` no list; ``the`` may start one: ``the airport``). Enum
  arguments and values with no close span (a synonym such as ``kitchen`` for ``cooking area``)
  are kept.
"""
from __future__ import annotations

from typing import Optional, Sequence

from speechlm.agent.calls import RESERVED, Call
from speechlm.agent.slu_f1 import char_distance
from speechlm.agent.tools import get_tool


# English function words and fillers: never the first or last word of a slot value
EDGE_WORDS = frozenset("""a an and are as at be but by can could do for from had has have he her him his how i if in
into is it its me my no not of off on or our she so than that their them then there they this those to up us was we
were what when where which who will with would you your um uh hmm er erm ah oh please""".split())


def value_like(words: Sequence[str]) -> bool:
    """Whether a span of words can be a slot value: no function word or filler at either end
    (``the`` may start it), and no character a call reserves (an e2e model's heard words are
    free text: ``time = eight am`` is no event)."""
    return (bool(words) and words[0] not in EDGE_WORDS and words[-1] not in EDGE_WORDS | {"the"}
            and not any(c in w for w in words for c in RESERVED))


def _words(text: str) -> list[str]:
    # a possessive grounds its owner: "mary's email" holds the person "mary"
    return [w[:-2] if w.endswith("'s") else w for w in text.lower().split()]


def _content(text: str) -> str:
    # "the work" and "work" name the same place: an article is no reason to keep a value
    return text[4:] if text.startswith("the ") else text


def holds(text: str, value: str) -> bool:
    """Whether ``value``'s words occur as consecutive words of ``text``."""
    words, v = _words(text), value.lower().split()
    n = len(v)
    return n > 0 and any(words[i : i + n] == v for i in range(len(words) - n + 1))


def held(value: str, texts: Sequence[str]) -> bool:
    """Whether one of ``texts`` holds ``value``, or, for a time relative to another (``three hours
    before eleven am``: the request's offset, a calendar entry's time), one holds each side."""
    if any(holds(t, value) for t in texts):
        return True
    for sep in (" before ", " after "):
        left, found, right = value.partition(sep)
        if found and left.strip() and right.strip() and held(left, texts) and held(right, texts):
            return True
    return False


def nearest_span(value: str, texts: Sequence[str]) -> Optional[tuple[str, float]]:
    """The word span of ``texts`` closest to ``value`` (one word fewer to one more, reading like a
    value: :func:`value_like`) and its character distance (a leading ``the`` aside); ties go to
    the span with as many words as the value."""
    n = len(value.split())
    best: Optional[tuple[float, int, str]] = None
    for text in texts:
        words = text.lower().split()
        for size in range(max(1, n - 1), n + 2):
            for i in range(len(words) - size + 1):
                if not value_like(words[i : i + size]):
                    continue
                span = " ".join(words[i : i + size])
                key = (char_distance(_content(value), _content(span)), abs(size - n), span)
                if best is None or key < best:
                    best = key
    return None if best is None else (best[2], best[0])


# the arguments whose values may hold closed words: times, dates and numbers
CLOSED_ARGS = frozenset({"time", "date", "timeofday", "expression", "change_amount", "phone_number",
                         "general_frequency"})


def closed_words() -> str:
    """Words a value of :data:`CLOSED_ARGS` may hold though nobody said them: numbers and times,
    days and parts of days, and the tools' enum values."""
    from speechlm.agent.loop import number_words
    from speechlm.agent.tools import TOOLS

    words = [number_words(n) for n in range(100)] + ["hundred thousand am pm oh half quarter noon midnight",
             "today tomorrow tonight yesterday monday tuesday wednesday thursday friday saturday sunday",
             "weekend week next this morning afternoon evening night the",
             "minute minutes hour hours before after"]
    for name in TOOLS:
        for prop in get_tool(name).parameters.get("properties", {}).values():
            words += [str(v) for v in prop.get("enum", ())]
    return " ".join(words)


def ground_call(call: Call, said: Sequence[str], seen: Sequence[str] = (),
                max_distance: float = 0.5) -> tuple[Call, dict[str, list[str]]]:
    """``call`` with each free value that neither ``said`` (the user's words) nor ``seen`` (tool
    results) holds replaced by its nearest span of ``said`` within ``max_distance``; returns the
    call and the replacements (argument -> ``[old, new]``). ``max_distance <= 0`` keeps all."""
    if max_distance <= 0:
        return call, {}
    props = get_tool(call.name).parameters.get("properties", {})
    args, changed = dict(call.args), {}
    for key, value in call.args.items():
        if not isinstance(value, str) or not value.strip() or "enum" in props.get(key, {}):
            continue
        if held(value, (*said, *seen)):
            continue
        near = nearest_span(value, said)
        if near is not None and near[1] <= max_distance:
            args[key], changed[key] = near[0], [value, near[0]]
    return (Call(call.name, args), changed) if changed else (call, {})
