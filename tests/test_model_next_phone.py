"""The next-phone input (model.next_phone): training tells each frame of a phone-led target the
text's next phone, walking as the decoding's phone follower walks, and decoding feeds the same
input step by step."""
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
from speechlm.models.next_phone import next_phones
from test_model_helpers import phone_tts, tiny_config

N_PH = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return phone_tts(tmp_path_factory.mktemp("tpl"), N_PH)


def _model(vocab, **kw) -> SpeechLM:
    torch.manual_seed(0)
    return SpeechLM(tiny_config("delay", **kw), vocab).eval()


def _example(vocab, tpl, i, phones, frames=None):
    data = {"phones": np.asarray(phones)[:, None]}
    if frames is not None:
        data["speech"] = frames
    return build_example(f"u{i}", tpl, data, vocab, 3, with_targets=frames is not None)


def test_next_phones_walk_as_the_follower_does():
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames = rng.choice([0, 0, 3, 4, 5], size=int(rng.integers(1, 30)))
        f = PhoneFollower("codec_ph", 0, frames.tolist())
        want = []
        for p in frames.tolist():
            f.observe(p)
            want.append(f.next_phone())
        assert next_phones(frames).tolist() == want
    assert next_phones(np.array([0, 3, 3, 0, 5, 0, 5, 7])).tolist() == [3, 5, 5, 5, 7, 7, 7, -1]


def test_zero_start_and_clear_errors(setup):
    vocab, tpl = setup
    frames = np.stack([[0, 3, 3, 5, 7, 0], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], 1)
    batch = collate([_example(vocab, tpl, 0, [3, 5, 7], frames)], vocab.pad_id)
    with torch.no_grad():
        assert torch.equal(_model(vocab)(batch).loss, _model(vocab, next_phone="codec_ph")(batch).loss)
    with pytest.raises(ConfigError, match="next_phone: 'codec'"):
        _model(vocab, next_phone="codec")
    with pytest.raises(ConfigError, match="one row per frame"):
        tiny_config("flat", next_phone="codec_ph").validate()


def test_training_layout_gives_each_frame_the_next_phone(setup):
    vocab, tpl = setup
    model = _model(vocab, next_phone="codec_ph")
    frames = np.stack([[0, 3, 3, 0, 5, 5, 7, 0], np.arange(8) % 8, np.arange(8)[::-1] % 8], 1)
    batch = collate([_example(vocab, tpl, 0, [3, 5, 7], frames)], vocab.pad_id)
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    on = (prep.next_phone[0] >= 0).nonzero()[:, 0]
    assert prep.next_phone[0, on].tolist() == [3, 5, 5, 5, 7, 7]  # frames 0-5; the last phone's frames: none
    first = int(prep.layout.pos[0, int(batch.lengths[0]) - 9])  # layout row of frame 0 (8 frames, then <eos>)
    assert on.tolist() == list(range(first, first + 6))
    assert int(prep.layout.tokens[0, first, 0]) == vocab.offset("codec_ph", 0)  # frame 0's phone: silence


def test_decoding_feeds_the_next_phone_training_sees(setup):
    """Greedy decoding with the follower equals, at every Codec field slot, the argmax of the
    teacher-forced model (which computes the input from the output's own phones)."""
    vocab, tpl = setup
    model = _model(vocab, next_phone="codec_ph", length_weight=1.0)
    with torch.no_grad():
        model.next_phone.table.weight.normal_(0.0, 2.0)
        model.length_head[-1].weight.zero_()
        model.length_head[-1].bias.fill_(np.log(2.0))  # 2 frames per phone
    texts = [[3, 5, 7, 2], [4, 9, 1, 6]]
    prompts = collate([_example(vocab, tpl, i, t) for i, t in enumerate(texts)], vocab.pad_id)
    # each phone lasts at most 2 frames, so that every output spells its whole text
    cfg = DecodeConfig(search="greedy", max_len=30, follow_phones="phones", follow_max_silence=2, follow_max_stretch=1.0)
    hyps = sample_decode(model, prompts, cfg)
    checked = 0
    for b, text in enumerate(texts):
        frames = hyps[b][0].frames(3, vocab.pad_id)
        local = frames - np.array([vocab.offset("codec_ph", k) for k in range(3)])
        spoken = [p for p in local[:, 0].tolist() if p]
        assert [p for i, p in enumerate(spoken) if i == 0 or p != spoken[i - 1]] == text
        batch = collate([_example(vocab, tpl, b, text, local)], vocab.pad_id)
        with torch.no_grad():
            prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
            h = model.encode(prep)[0]
        first = int(prep.layout.pos[0, int(batch.lengths[0]) - len(frames) - 1])
        for k in (1, 2):  # the field streams (delay k): frame t is predicted at row first + t + k - 1
            a, e = vocab.stream_range("codec_ph", k)
            for t in range(len(frames)):
                got = int(model.head.logits(h[first + t + k - 1][None], k, ids=torch.arange(a, e))[0].argmax())
                assert got == local[t, k], (b, k, t)
                checked += 1
    assert checked > 20
    with torch.no_grad():
        model.next_phone.table.weight.zero_()
    again = sample_decode(model, prompts, cfg)
    assert [h[0].frames(3, vocab.pad_id).tolist() for h in hyps] != \
        [g[0].frames(3, vocab.pad_id).tolist() for g in again], "the input matters"


def test_decoding_a_model_that_reads_phones_needs_the_follower(setup):
    vocab, tpl = setup
    model = _model(vocab, next_phone="codec_ph")
    prompts = collate([_example(vocab, tpl, 0, [3, 5])], vocab.pad_id)
    with pytest.raises(ConfigError, match="follow_phones"):
        sample_decode(model, prompts, DecodeConfig(max_len=5))


def test_forced_decoding_of_true_frames_matches_teacher_forcing(setup):
    """tts-diagnose's decode-path parity for a model that reads the next phone: decoding the true
    frames (the follower walking their phones) computes the teacher-forced logits slot for slot."""
    from speechlm.diagnose.parity import ParityStats, decode_forced
    from speechlm.diagnose.teacher import target_rows

    vocab, tpl = setup
    model = _model(vocab, next_phone="codec_ph")
    with torch.no_grad():
        model.next_phone.table.weight.normal_(0.0, 2.0)  # the input matters
    rng = np.random.default_rng(0)
    exs = []
    for i, text in enumerate([[3, 5, 7, 2], [4, 9, 1]]):
        phones = np.concatenate([[0], np.repeat(text, rng.integers(1, 4, len(text))), [0]])
        frames = np.stack([phones, rng.integers(0, 8, len(phones)), rng.integers(0, 8, len(phones))], 1)
        exs.append(_example(vocab, tpl, i, text, frames))
    full = collate(exs, vocab.pad_id)
    prompts = collate([_example(vocab, tpl, i, t) for i, t in enumerate([[3, 5, 7, 2], [4, 9, 1]])], vocab.pad_id)
    with torch.no_grad():
        truth = target_rows(model, full)
        stats = ParityStats(model)
        stats.add(truth, decode_forced(model, prompts, truth))
    s = stats.summary()
    assert s["n_mismatches"] == 0, s["mismatches"]
    assert s["max_abs_diff"] < 1e-3 and s["slots"] > 20
