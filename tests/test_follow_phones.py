"""Phone-following decoding (``follow_phones``): a target led by a phone stream walks through the
phones of its text condition in order, however the model would have wandered."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig
from speechlm.infer.follow import PhoneFollower
from speechlm.infer.generate import sample_decode
from speechlm.models import SpeechLM
from test_model_helpers import phone_tts as make_phone_tts, tiny_config

N_PH = 12


def test_follower_allows_stay_next_and_bounded_silence():
    f = PhoneFollower("codec_ph", 0, [3, 5, 5, 0, 7], max_silence=2, max_stretch=2.0)
    assert f.phones == [3, 5, 7]  # runs merged, silence dropped
    assert f.allowed() == [0, 3] and not f.may_end()
    f.observe(0), f.observe(0)
    assert f.allowed() == [3]  # two silent frames in a row: speak now
    f.observe(3)
    assert f.pos == 0 and f.allowed() == [0, 3, 5]
    f.observe(9)  # not allowed, not a step: the pointer stays
    assert f.pos == 0
    f.pace(predicted=6)  # 2 frames per phone, stretch 2x: a phone lasts at most 4 frames
    for _ in range(3):
        f.observe(3)
    assert f.allowed() == [5]
    assert f.length(j=5, predicted=6) == 5 + 1 + 4  # two phones left at 2 frames each
    f.observe(5), f.observe(7)
    assert f.may_end() and f.allowed() == [0, 7]


@pytest.fixture(scope="module")
def phone_tts(tmp_path_factory):
    vocab, tpl = make_phone_tts(tmp_path_factory.mktemp("tpl"), N_PH)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab).eval()
    return vocab, tpl, model


def _prompts(vocab, tpl, texts):
    return collate([build_example(f"u{i}", tpl, {"phones": np.asarray(p)[:, None]}, vocab, 3, with_targets=False)
                    for i, p in enumerate(texts)], vocab.pad_id)


def _phone_runs(vocab, hyp) -> list[int]:
    ph = [int(p) for p in hyp.frames(3, vocab.pad_id)[:, 0] - vocab.offset("codec_ph", 0) if p != 0]
    return [p for i, p in enumerate(ph) if i == 0 or p != ph[i - 1]]


def test_decoding_spells_the_condition_phones_in_order(phone_tts):
    vocab, tpl, model = phone_tts
    texts = [[3, 5, 7, 2], [4, 4, 9, 1, 6, 3, 8]]
    ended = 0
    for seed in range(3):
        cfg = DecodeConfig(search="sample", temperature=1.5, seed=seed, max_len=80, follow_phones="phones",
                           follow_max_silence=3)
        free = sample_decode(model, _prompts(vocab, tpl, texts), DecodeConfig(search="sample", temperature=1.5,
                                                                                seed=seed, max_len=80))
        held = sample_decode(model, _prompts(vocab, tpl, texts), cfg)
        for text, f_hyps, h_hyps in zip(texts, free, held):
            want = [p for i, p in enumerate(text) if i == 0 or p != text[i - 1]]
            got = _phone_runs(vocab, h_hyps[0])
            assert got == want[: len(got)]  # never off the text
            if h_hyps[0].stopped:
                assert got == want  # the model may end only once every phone is spoken
                ended += 1
            assert _phone_runs(vocab, f_hyps[0]) != want  # the untrained model, left free, does not
            ph = h_hyps[0].frames(3, vocab.pad_id)[:, 0] - vocab.offset("codec_ph", 0)
            quiet = 0
            for p in ph[: max(i for i, p in enumerate(ph) if p == want[-1]) if want[-1] in ph else len(ph)]:
                quiet = quiet + 1 if p == 0 else 0
                assert quiet <= 3
    assert ended > 0

def test_follow_phones_names_what_is_wrong(phone_tts):
    vocab, tpl, model = phone_tts
    with pytest.raises(ConfigError, match="follow_phones: 'phone'"):
        sample_decode(model, _prompts(vocab, tpl, [[3, 5]]), DecodeConfig(follow_phones="phone", max_len=5))
    with pytest.raises(ConfigError, match="follow_phones"):
        DecodeConfig(search="beam", follow_phones="phones").validate()


def test_follow_max_stretch_needs_the_length_head(phone_tts):
    vocab, tpl, model = phone_tts  # the tiny model has no length head
    cfg = DecodeConfig(follow_phones="phones", follow_max_stretch=2.0, max_len=5)
    with pytest.raises(ValueError, match="follow_max_stretch"):
        sample_decode(model, _prompts(vocab, tpl, [[3, 5]]), cfg)
