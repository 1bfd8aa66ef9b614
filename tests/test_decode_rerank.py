"""Choosing among sampled TTS outputs by the model's own recognizer (``rerank: asr``).

Real parts: espeak-ng words, Codec 2, a char tokenizer, a tiny model whose ASR task and CTC head
are trained here on those words, saved as a model dir and loaded back by ``speechlm.load``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import speechlm
from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.data.audio import load_audio
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig
from speechlm.infer.rerank import recognizer_scores, recognizer_task_check
from conftest import synth
from test_model_helpers import packed_model_dir, train

CHARS = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz'"]
WORDS = ("yes", "seven", "stop")


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A model dir whose CTC head has learned to hear the three words, and their 8 kHz audio."""
    tmp = tmp_path_factory.mktemp("rerank")
    root = packed_model_dir(tmp / "model", ("asr", "plain_tts"), CHARS, ctc_weight=1.0, ctc_tokenizer="text_bpe",
                            decode="search: sample\nmax_len: 30\n")
    lm = speechlm.load(root)
    asr = lm.template("asr")
    wavs = {w: load_audio(str(synth(tmp / f"{w}.wav", w)), 8000) for w in WORDS}
    examples = [build_example(w, asr, {"speech": lm.encode_value("codec", (wavs[w], 8000)),
                                       "text": lm.encode_value("text_bpe", w)}, lm.vocab, lm.model.n_streams)
                for w in WORDS]
    train(lm.model, collate(examples, lm.vocab.pad_id), 120, lr=3e-3)
    lm.model.save_pretrained(root)
    return root, wavs


def test_the_model_hears_which_candidate_says_the_text(judged):
    root, wavs = judged
    lm = speechlm.load(root)  # the trained weights, through the real loading code
    candidates = [lm.encode_value("codec", (wavs[w], 8000)) for w in WORDS]
    for i, word in enumerate(WORDS):
        scores = recognizer_scores(lm, "asr", word, candidates, "codec", word)
        assert int(np.argmax(scores)) == i, (word, scores)
    # an empty output is never chosen
    assert recognizer_scores(lm, "asr", "yes", [candidates[0][:0], candidates[0]], "codec", "u")[0] == float("-inf")


def test_phone_led_codec2_tokens_reach_the_recognizer_as_codec2_tokens(judged):
    """A codec2_phones output is heard as its Codec 2 streams, not decoded and encoded again
    (which moves the codes: the recipe's ASR heard its own resynthesized test set as noise)."""
    from speechlm.tokenizers.codec2 import Codec2Tokenizer
    from speechlm.tokenizers.codec2_phones import Codec2PhonesTokenizer

    _, wavs = judged
    plain, led = Codec2Tokenizer(), Codec2PhonesTokenizer()
    codes = plain.encode(wavs["yes"], 8000)
    with_phones = np.concatenate([np.full((len(codes), 1), 3, np.int32), codes], 1)
    assert np.array_equal(led.tokens_for(plain, with_phones), codes)
    assert np.array_equal(plain.tokens_for(plain, codes), codes)
    assert plain.tokens_for(Codec2Tokenizer(layout="bytes"), codes) is None  # another code: through audio
    assert not np.array_equal(plain.encode(plain.decode(codes), 8000), codes)


def test_decode_keeps_the_candidate_the_recognizer_prefers(judged, tmp_path):
    root, _ = judged
    conf = tmp_path / "rerank.yaml"
    conf.write_text("search: sample\nnbest: 4\nrerank: asr\nmin_len: 10\nmax_len: 30\nseed: 3\n")
    texts = tmp_path / "text"
    texts.write_text("u1 yes\nu2 stop\nu3 seven\n")
    out = tmp_path / "out"
    assert cli(["decode", "--model-dir", str(root), "--out-dir", str(out), "--task", "plain_tts",
                "--input", str(texts), "--decode-config", str(conf), "--nj", "1"]) == 0
    recs = {}
    for line in (out / "split1" / "0" / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        recs[rec["id"]] = rec
    assert sorted(recs) == ["u1", "u2", "u3"]
    lm = speechlm.load(root)
    cfg = DecodeConfig(search="sample", nbest=4, min_len=10, max_len=30, seed=3)
    texts = {"u1": "yes", "u2": "stop", "u3": "seven"}  # the runner's batch order: shortest input first
    tpl = lm.template("plain_tts")
    outs = lm.generate_outputs("plain_tts", [lm.condition_tokens(tpl, {"phones": t}) for t in texts.values()], cfg)
    chosen = []
    for utt, hyps in zip(texts, outs):  # the same draws as the decode command's
        heard = recs[utt]["heard"]
        assert len(heard) == 4
        k = int(np.argmax(heard))
        assert len(hyps[k].tokens) >= 10
        assert np.array_equal(np.asarray(recs[utt]["tokens"]), hyps[k].tokens)
        chosen.append(k)
    assert any(k != 0 for k in chosen), "the test should see the recognizer pick another than the first draw"


def test_rerank_is_refused_where_it_cannot_apply(judged):
    root, _ = judged
    with pytest.raises(ConfigError, match="nbest >= 2"):
        DecodeConfig(search="sample", rerank="asr").validate()
    lm = speechlm.load(root)
    with pytest.raises(ConfigError, match="'plain_tts' must hear one audio condition"):
        recognizer_task_check(lm, "plain_tts", lm.template("plain_tts"))
    with pytest.raises(ConfigError, match="does not generate audio"):
        recognizer_task_check(lm, "asr", lm.template("asr"))
    with pytest.raises(ConfigError, match="not in this model"):
        recognizer_task_check(lm, "asr_x", lm.template("plain_tts"))
