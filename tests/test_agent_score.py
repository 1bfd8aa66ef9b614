"""SLU-F1 on hand-made cases with known answers, and the agent scorer on a run dir written by hand."""
from __future__ import annotations

import pytest

from speechlm.agent.slu_f1 import SLUF1, char_distance, levenshtein, slu_f1, word_distance


def E(t: str, f: str) -> dict:
    return {"type": t, "filler": f}


def test_exact_match_is_one():
    gold = [E("time", "seven am"), E("date", "tomorrow")]
    s = slu_f1([(gold, list(reversed(gold)))])
    assert s == pytest.approx({"span_f1": 1.0, "word_f1": 1.0, "char_f1": 1.0, "slu_f1": 1.0,
                               "slu_precision": 1.0, "slu_recall": 1.0})


def test_one_substituted_word():
    # word: WER 1/2 -> tp 1, fp = fn = 0.5 -> F1 2/3; char: "seven"->"eight" is 5 edits of 8 chars
    # -> fp = fn = 0.625 -> F1 1/1.625; SLU-F1 sums both: tp 2, fp = fn = 1.125 -> 2/3.125
    s = slu_f1([([E("time", "seven am")], [E("time", "eight am")])])
    assert s["span_f1"] == 0.0
    assert s["word_f1"] == pytest.approx(2 / 3)
    assert s["char_f1"] == pytest.approx(1 / 1.625)
    assert s["slu_f1"] == pytest.approx(2 / 3.125)


def test_a_missing_and_an_extra_slot():
    # date matches exactly; time is missed (fn 1), place_name is extra (fp 1): P = R = F1 = 1/2
    gold = [E("date", "tomorrow"), E("time", "seven am")]
    pred = [E("date", "tomorrow"), E("place_name", "kitchen")]
    s = slu_f1([(gold, pred)])
    assert s["slu_f1"] == pytest.approx(0.5)
    assert s["word_f1"] == pytest.approx(0.5) and s["char_f1"] == pytest.approx(0.5)
    # nothing predicted: recall 0 -> F1 0; nothing gold and nothing predicted adds no counts
    assert slu_f1([(gold, [])])["slu_f1"] == 0.0
    assert slu_f1([(gold, gold), ([], [])])["slu_f1"] == 1.0


def test_same_type_twice_matches_the_nearest_gold_filler():
    gold = [E("person", "anna"), E("person", "bob smith")]
    pred = [E("person", "bob smyth"), E("person", "anna")]
    m = SLUF1()
    m.add(gold, pred)
    word = m.by_distance["word"]
    # "bob smyth" pairs with "bob smith" (WER 1/2), not with "anna" (WER 2): fp = fn = 0.5
    assert word.tp["person"] == 2 and word.fp["person"] == pytest.approx(0.5)
    assert word.fn["person"] == pytest.approx(0.5)


def test_micro_sums_counts_over_utterances_and_macro_averages_types():
    pairs = [([E("date", "today")], [E("date", "today")]),
             ([E("time", "noon")], [])]
    assert slu_f1(pairs)["slu_f1"] == pytest.approx(2 / 3)  # tp 2 (x2 distances), fn 2 -> P 1, R 1/2
    assert slu_f1(pairs, average="macro")["slu_f1"] == pytest.approx(0.5)  # date 1.0, time 0.0


def test_distances_match_jiwer_and_the_normalised_levenshtein():
    import jiwer

    for gold, pred in [("set an alarm", "set the alarm for"), ("kitchen", "kitten"), ("a b c", "c b a")]:
        assert word_distance(gold, pred) == pytest.approx(jiwer.wer(gold, pred))
        assert char_distance(gold, pred) == pytest.approx(levenshtein(gold, pred) / max(len(gold), len(pred)))
    assert levenshtein("kitten", "sitting") == 3
    assert word_distance("seven", "seven am pm") == 2.0  # WER is not capped at 1


def test_entities_without_type_or_filler_are_named_errors():
    with pytest.raises(ValueError, match="type"):
        slu_f1([([E("date", "today")], [{"filler": "today"}])])
