"""Speaker prompts: another utterance of the same speaker, cut to length, deterministic under a seed."""
from __future__ import annotations

import numpy as np
import pytest

from speechlm.data.speaker_prompt import SpeakerPrompt, speakers_with_one_utterance

UTT2SPK = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
LENGTHS = {"a1": 300, "a2": 80, "a3": 500, "b1": 200, "b2": 220, "c1": 90}


def tokens(utt: str) -> np.ndarray:
    n = LENGTHS[utt]
    return np.stack([np.arange(n), np.full(n, hash(utt) % 1000)], 1).astype(np.int32)


def test_prompt_is_another_utterance_of_the_speaker_cut_to_length():
    sp = SpeakerPrompt(UTT2SPK, tokens, max_frames=100, seed=3)
    for utt in ("a1", "a2", "a3", "b1", "b2"):
        other = sp.choose(utt)
        assert other != utt and UTT2SPK[other] == UTT2SPK[utt]
        p = sp(utt)
        assert len(p) == min(100, LENGTHS[other]) and p.shape[1] == 2
        src = tokens(other)
        start = int(p[0, 0])  # a contiguous window of the chosen utterance
        np.testing.assert_array_equal(p, src[start:start + len(p)])


def test_deterministic_under_seed_and_varies_with_epoch_and_seed():
    a = SpeakerPrompt(UTT2SPK, tokens, max_frames=50, seed=1)
    b = SpeakerPrompt(UTT2SPK, tokens, max_frames=50, seed=1)
    for utt in ("a1", "a3", "b1"):
        np.testing.assert_array_equal(a(utt), b(utt))
        np.testing.assert_array_equal(a(utt, epoch=2), b(utt, epoch=2))
    draws = {(a.choose("a1", e), int(a("a1", e)[0, 0])) for e in range(20)}
    assert len(draws) > 3  # new epochs give new prompts
    c = SpeakerPrompt(UTT2SPK, tokens, max_frames=50, seed=2)
    assert any(not np.array_equal(a("a3", e), c("a3", e)) for e in range(5))


def test_single_utterance_speaker_and_availability():
    strict = SpeakerPrompt(UTT2SPK, tokens, max_frames=50)
    assert strict.choose("c1") is None and strict("c1") is None
    loose = SpeakerPrompt(UTT2SPK, tokens, max_frames=50, allow_self=True)
    assert loose.choose("c1") == "c1" and len(loose("c1")) == 50 and loose.n_self == 2
    only = SpeakerPrompt(UTT2SPK, tokens, max_frames=50, available={"a1", "a2", "b1"})
    assert {only.choose("a3", e) for e in range(10)} <= {"a1", "a2"}
    assert only.choose("b2") == "b1" and only.choose("b1") is None
    assert speakers_with_one_utterance(UTT2SPK) == ["C"]
    with pytest.raises(KeyError, match="no speaker"):
        strict.choose("zz")


def test_from_utt2spk_file(tmp_path):
    (tmp_path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in UTT2SPK.items()))
    sp = SpeakerPrompt.from_utt2spk_file(tmp_path / "utt2spk", tokens, max_frames=10)
    assert sp.choose("b1") == "b2"
    (tmp_path / "bad").write_text("a1 A\nb1\n")
    with pytest.raises(ValueError, match="bad:2"):
        SpeakerPrompt.from_utt2spk_file(tmp_path / "bad", tokens, max_frames=10)
