"""Text metrics with known answers: normalizer, WER/CER (jiwer), BLEU/chrF (sacrebleu), id checks."""
from __future__ import annotations

import math

import pytest

from speechlm.eval import METRICS, build_metric, normalize_text
from speechlm.eval.asr import edit_counts


def test_registry_lists_every_metric_and_builds_each():
    expected = {"wer", "cer", "bleu", "chrf", "intelligibility", "spk_sim", "dnsmos", "mos", "stoi", "pesq", "mcd", "si_snr"}
    assert expected <= set(METRICS.names())
    for name in METRICS.names():
        if name == "mos":  # needs the user's model file
            with pytest.raises(ValueError, match="--mos-model"):
                build_metric(name)
            continue
        metric = build_metric(name, normalizer="default", unknown_option=1)  # unknown options are dropped
        assert metric.name == name
    with pytest.raises(KeyError, match="did you mean 'wer'"):
        build_metric("wre")


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, speechlm.eval; print(sorted(m for m in ('torch', 'jiwer', 'faster_whisper', 'resemblyzer', 'onnxruntime', 'sacrebleu') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("raw,norm", [
    ("  Hello, World!  ", "hello world"),
    ("It's a ROUND-trip.", "it's a round trip"),
    ("'quoted' text", "quoted text"),
    ("ｆｕｌｌ　width", "full width"),
    ("a\tb\n c", "a b c"),
    ("100% sure; 3.5 m", "100 sure 3 5 m"),
])
def test_normalizer(raw, norm):
    assert normalize_text(raw) == norm


def test_identical_text_gives_zero_wer_and_cer():
    ref = {"u1": "turn on the kitchen lights", "u2": "what is the weather like today"}
    for name in ("wer", "cer"):
        res = build_metric(name)(dict(ref), ref)
        assert res.summary[name] == 0.0
        assert all(r[name] == 0.0 for r in res.per_utt.values())


def test_known_substitution_gives_right_wer():
    ref = {"u1": "a b c d", "u2": "e f g h"}
    hyp = {"u1": "a x c d", "u2": "e f g h"}
    res = build_metric("wer")(hyp, ref)
    assert res.summary["wer"] == pytest.approx(100 * 1 / 8)
    assert res.summary["sub"] == pytest.approx(100 * 1 / 8)
    assert res.per_utt["u1"]["wer"] == pytest.approx(25.0)
    assert res.per_utt["u1"]["sub"] == 1 and res.per_utt["u1"]["hits"] == 3
    assert res.worst(1)[0][0] == "u1"


def test_deletions_insertions_and_normalization():
    ref = {"u1": "Hello, world!", "u2": "one two three"}
    hyp = {"u1": "hello world", "u2": "one three three four"}
    res = build_metric("wer")(hyp, ref)
    # u1 is perfect after normalization; u2: "two"->"three" (sub) + "four" (ins)
    assert res.per_utt["u1"]["wer"] == 0.0
    assert res.per_utt["u2"]["errors"] == 2
    assert res.summary["wer"] == pytest.approx(100 * 2 / 5)
    raw = build_metric("wer", normalizer="none")(hyp, ref)
    assert raw.per_utt["u1"]["wer"] == 100.0  # "Hello," and "world!" both differ


def test_cer_counts_characters():
    res = build_metric("cer")({"u1": "abd d"}, {"u1": "abc d"})
    assert res.summary["cer"] == pytest.approx(20.0)
    assert edit_counts("abc", "", "char") == {"sub": 0, "del": 3, "ins": 0, "hits": 0, "n_ref": 3}


def test_empty_reference_and_hypothesis():
    assert edit_counts("", "a b", "word")["ins"] == 2
    res = build_metric("wer")({"u1": "", "u2": "x"}, {"u1": "a b", "u2": ""})
    assert res.per_utt["u1"]["del"] == 2 and res.per_utt["u1"]["wer"] == 100.0
    assert math.isinf(res.per_utt["u2"]["wer"])
    assert res.summary["wer"] == pytest.approx(150.0)  # 3 errors over 2 reference words
    assert res.worst(1)[0][0] == "u2"


def test_hypothesis_id_missing_from_reference_names_file_and_utt():
    with pytest.raises(ValueError, match=r"dec/text: utterance 'u9' not found in ref/text"):
        build_metric("wer")({"u1": "a", "u9": "b"}, {"u1": "a"}, hyp_name="dec/text", ref_name="ref/text")


def test_reference_without_hypothesis_is_skipped_with_a_warning(caplog):
    res = build_metric("wer")({"u1": "a b"}, {"u1": "a b", "u2": "c"})
    assert list(res.per_utt) == ["u1"]
    assert "1 of 2 reference utterances have no hypothesis" in caplog.text


def test_bleu_and_chrf_identical_text_is_100():
    ref = {"u1": "the cat sat on the mat", "u2": "a quick brown fox jumps over the dog"}
    for name in ("bleu", "chrf"):
        res = build_metric(name)(dict(ref), ref)
        assert res.summary[name] == pytest.approx(100.0)
        assert all(r[name] == pytest.approx(100.0) for r in res.per_utt.values())


def test_bleu_drops_with_errors_and_orders_worst():
    ref = {"u1": "the cat sat on the mat today", "u2": "a quick brown fox jumps over the dog"}
    hyp = {"u1": "the cat sat on the mat today", "u2": "a slow red fox walks past the cat"}
    res = build_metric("bleu")(hyp, ref)
    assert 0.0 < res.summary["bleu"] < 100.0
    assert res.worst(1)[0][0] == "u2"
    chrf = build_metric("chrf")(hyp, ref)
    assert chrf.per_utt["u1"]["chrf"] == pytest.approx(100.0)
    assert chrf.per_utt["u2"]["chrf"] < 60.0
