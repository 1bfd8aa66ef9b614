"""Shared vocabulary rows (``rows_of`` in tokenizers.yaml): a phone-led Codec 2 target whose Codec 2
streams take the ids of the ``codec`` that ASR reads, so that both tasks train the same rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.bin.vocab import build_vocab
from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig
from speechlm.infer.generate import sample_decode
from speechlm.models import SpeechLM
from speechlm.tasks import load_template
from speechlm.tasks.template import load_template_file
from speechlm.vocab import Vocabulary, VocabularyError
from test_model_helpers import tiny_config

N_PH = 12


def _vocab(share: bool) -> Vocabulary:
    v = Vocabulary()
    v.add_tokenizer("codec", [8, 8])
    v.add_tokenizer("text_bpe", [10])
    v.add_tokenizer("phones", [N_PH])
    v.add_tokenizer("codec_ph", [N_PH, 8, 8], {1: ("codec", 0), 2: ("codec", 1)} if share else None)
    v.add_task("asr")
    v.add_task("tts_ph")
    return v


def test_shared_streams_reuse_the_rows_and_add_no_tokens(tmp_path):
    own, shared = _vocab(False), _vocab(True)
    assert len(own) - len(shared) == 16  # two 8-id streams not added again
    for k in (1, 2):
        assert shared.stream_range("codec_ph", k) == shared.stream_range("codec", k - 1)
    assert shared.tokenizer_of(shared.offset("codec_ph", 1) + 3) == ("codec", 0)  # named after the owner
    assert shared.tokenizer_of(shared.offset("codec_ph", 0)) == ("codec_ph", 0)
    assert [r[:2] for r in shared.unique_ranges()] == [("codec", 0), ("codec", 1), ("text_bpe", 0), ("phones", 0),
                                                       ("codec_ph", 0)]
    shared.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again.ranges == shared.ranges and again.tokens == shared.tokens
    again.add_tokenizer("codec_ph", [N_PH, 8, 8], {1: ("codec", 0), 2: ("codec", 1)})  # same layout: no-op
    assert len(again) == len(shared)
    with pytest.raises(VocabularyError, match="other shared rows"):
        again.add_tokenizer("codec_ph", [N_PH, 8, 8])  # its ids cannot move to rows of its own
    with pytest.raises(VocabularyError, match="other shared rows"):  # nor rows of its own to shared ones
        own.add_tokenizer("codec_ph", [N_PH, 8, 8], {1: ("codec", 0), 2: ("codec", 1)})
    with pytest.raises(VocabularyError, match=r"stream 0 \(12 ids\) cannot share the rows of 'codec' stream 0 \(8\)"):
        again.add_tokenizer("other", [N_PH], {0: ("codec", 0)})
    with pytest.raises(VocabularyError, match="'nope' is not in the vocabulary"):
        again.add_tokenizer("other", [8], {0: ("nope", 0)})


def test_vocab_cli_shares_the_streams_of_the_same_name(tmp_path):
    toks = tmp_path / "tokenizers.yaml"
    toks.write_text("codec: {type: codec2}\ncodec_ph: {type: codec2_phones, rows_of: codec}\n")
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", "asr", "--out", str(tmp_path / "v.json")]) == 0
    v = Vocabulary.load(tmp_path / "v.json")
    n = v.n_streams("codec")
    assert n == 8 and v.n_streams("codec_ph") == n + 1
    assert all(v.stream_range("codec_ph", k + 1) == v.stream_range("codec", k) for k in range(n))
    assert v.tokenizer_of(v.offset("codec_ph", 0)) == ("codec_ph", 0)  # the phone stream has rows of its own
    toks.write_text("codec_ph: {type: codec2_phones, rows_of: codec}\ncodec: {type: codec2}\n")
    with pytest.raises(ConfigError, match=r"codec_ph\.rows_of: 'codec' must be defined before it"):
        build_vocab(str(toks), ["asr"])
    toks.write_text("phone: {type: g2p}\ncodec_ph: {type: codec2_phones, rows_of: phone}\n")
    with pytest.raises(ConfigError, match=r"no stream of 'codec_ph' .* is named as a stream of 'phone' \(s0\)"):
        build_vocab(str(toks), ["asr"])
    toks.write_text("codec: {type: codec2}\ncodec_ph: {type: codec2_phones, rows_of: codek}\n")
    with pytest.raises(ConfigError, match=r"rows_of: no tokenizer 'codek' in this file; it defines: codec, codec_ph"):
        build_vocab(str(toks), ["asr"])
    toks.write_text("codec: {type: codec2}\ncodec_ph: {type: codec2_phones, rows_of: [codec]}\n")
    with pytest.raises(ConfigError, match="rows_of: expected the name of another tokenizer"):
        build_vocab(str(toks), ["asr"])


def _tts_example(vocab, tpl, tmp_i=0):
    rng = np.random.default_rng(tmp_i)
    phones = rng.integers(2, N_PH, (5, 1))
    frames = np.concatenate([np.repeat(phones, 2, 0), rng.integers(0, 8, (10, 2))], 1)
    return build_example(f"t{tmp_i}", tpl, {"phones": phones, "speech": frames}, vocab, 3, with_targets=True)


@pytest.fixture(scope="module")
def tts_ph(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "tts_ph.yaml"
    path.write_text("name: tts_ph\nconditions:\n  - {name: phones, modality: text, tokenizer: phones, source: text}\n"
                    "targets:\n  - {name: speech, modality: audio, tokenizer: codec_ph, source: wav.scp}\n")
    return load_template_file(path)


@pytest.mark.parametrize("share", [False, True])
def test_tts_examples_train_the_rows_asr_reads_only_when_shared(tts_ph, share):
    vocab = _vocab(share)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab)
    batch = collate([_tts_example(vocab, tts_ph, i) for i in range(2)], vocab.pad_id)
    model(batch).loss.backward()
    grad = model.embed.weight.grad
    a, b = vocab.stream_range("codec", 0)  # the rows the ASR condition's Codec 2 frames read
    assert (grad[a:b].abs().sum() > 0) == share


def test_shared_rows_keep_each_target_in_its_own_ranges(tts_ph):
    """Both tasks train and decode over a shared vocabulary: ASR's text and the TTS target's
    streams stay in their tokenizers' ranges, and a codec target still ends in its own group."""
    vocab = _vocab(True)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab).eval()
    asr = build_example("a0", load_template("asr"), {"speech": np.arange(12).reshape(6, 2) % 8,
                                                      "text": np.array([[1], [4], [7]])}, vocab, 3)
    out = model(collate([asr, _tts_example(vocab, tts_ph)], vocab.pad_id))
    assert torch.isfinite(out.loss)
    a, b = vocab.stream_range("codec", 0)
    assert int(model.head.g0_seg[a]) == int(model.head.g0_of[a])  # codec stream 0 is its own stream-0 group
    prompt = collate([build_example("p", tts_ph, {"phones": np.array([[3], [5]])}, vocab, 3, with_targets=False)],
                     vocab.pad_id)
    hyp = sample_decode(model, prompt, DecodeConfig(search="greedy", max_len=8))[0][0]
    frames = hyp.frames(3, vocab.pad_id)
    assert len(frames) > 0
    for k in range(3):
        lo, hi = vocab.stream_range("codec_ph", k)
        assert ((frames[:, k] >= lo) & (frames[:, k] < hi)).all(), k
