"""The requests' word n-gram model: a distribution over the next word in every context, its
counts kept through save/load, the re-ranking of a recognizer's hypotheses, `speechlm agent
train-lm`, and the Whisper cascade re-ranking the bundled Whisper's n best texts with it."""
from __future__ import annotations

import json
import math

import pytest

from speechlm.agent.wordlm import EOS, WordLM, rescore
from speechlm.cli import main as cli

REQUESTS = ["check the bus times to london", "check the bus times to paris and add the next one to my calendar",
            "turn off the smart plug", "turn off the kitchen lights", "what are the train times to oxford"]


@pytest.fixture(scope="module")
def lm() -> WordLM:
    return WordLM.train(REQUESTS)


@pytest.mark.parametrize("context", [[], ["check", "the"], ["the", "bus"], ["to"], ["never", "heard"], ["smart"]])
def test_next_word_probabilities_sum_to_one(lm, context):
    vocab = set(lm.counts[0][()])  # every word seen, the end of a sentence among them
    assert EOS in vocab
    total = sum(lm.prob(w, context) for w in vocab) + lm.prob("zyzzyva", context)  # + the slot of unseen words
    assert total == pytest.approx(1.0, abs=1e-9)


def test_words_users_say_score_higher(lm):
    assert lm.logprob("check the bus times to london") > lm.logprob("check the best times to london")
    assert lm.prob("bus", ["check", "the"]) > lm.prob("bus", ["never", "heard"]) > lm.prob("best", ["check", "the"])
    hyps = [("check the best times to london", -1.0), ("check the bus times to london", -1.5), ("", -0.1)]
    assert rescore(hyps, lm, 0.0) == "check the best times to london"  # Whisper's own ranking
    assert rescore(hyps, lm, 0.5) == "check the bus times to london"
    assert rescore([("", -0.1)], lm, 0.5) == ""


def test_saved_model_loads_back_and_bad_files_are_named(lm, tmp_path):
    lm.save(tmp_path / "lm.json")
    back = WordLM.load(tmp_path / "lm.json")
    for text in REQUESTS + ["turn off the bus", "zyzzyva"]:
        assert back.logprob(text) == pytest.approx(lm.logprob(text), rel=1e-12)
    (tmp_path / "bad.json").write_text(json.dumps({"order": 3, "discount": 0.75, "counts": [{}]}))
    with pytest.raises(ValueError, match="bad.json: not a word LM"):
        WordLM.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="order must be >= 1"):
        WordLM(order=0)
    with pytest.raises(ValueError, match="no sentences"):
        WordLM.train([])


def test_train_lm_reads_kaldi_text_files_once_per_sentence(tmp_path):
    (tmp_path / "text").write_text("".join(f"u{i} {t}\n" for i, t in enumerate(REQUESTS + REQUESTS[:1])))
    assert cli(["agent", "train-lm", "--text", str(tmp_path / "text"), "--out", str(tmp_path / "lm.json"),
                "--order", "2"]) == 0
    lm = WordLM.load(tmp_path / "lm.json")
    assert lm.order == 2 and lm.counts[1][("bus",)]["times"] == 2  # the repeated sentence counted once
    unigram = lm.counts[0][()]  # an unseen context backs off to the add-one unigram
    assert unigram[EOS] == len(REQUESTS)
    assert math.isclose(lm.prob("check", ["zyzzyva"]), (unigram["check"] + 1) / (sum(unigram.values()) + len(unigram) + 1))
