"""A stream strategy is one class plus one registration: a test-only strategy, defined and
registered here and nowhere else, lays out batches, trains, decodes (greedy, batched, streamed,
with the progress input), saves and loads through the library's own code paths.

The strategy, "lag1": streams 1.. of an audio target come one row after stream 0 (a delay pattern
whose delays are 0, 1, 1, ...; the end token that follows the segment moves into stream 0 of its
one tail row, as in delay)::

    input:   M a0 a1 a2 E  t0        output:  M a0 a1 a2 E  t0
             . b0 b1 b2 .  .                  .  . b0 b1 b2 .
             . c0 c1 c2 .  .                  .  . c0 c1 c2 .
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_model_helpers import tiny_config, toy_examples, toy_vocab, train

from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import AUDIO_TGT, PAD, SPECIAL, TEXT_TGT
from speechlm.infer import DecodeConfig, generate
from speechlm.infer.generate import sample_decode
from speechlm.infer.steps import Masker
from speechlm.infer.stream import FrameCutter
from speechlm.models import ModelConfig, SpeechLM
from speechlm.models.patterns import PATTERNS, Pattern, Slot, runs, used_streams
from speechlm.train.build import segment_rows_fn

NAME = "lag1_test_only"


@PATTERNS.register(NAME)
class Lag1Pattern(Pattern):
    """Streams 1.. of audio targets one row late (see the module docstring)."""

    name = NAME

    def row_map(self, tokens: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T, S = tokens.shape
        rows, out_kinds = [], []
        pos = np.full(T, -1, dtype=np.int64)
        n_out, skip = 0, -1
        for a, e, kind in runs(kinds):
            a = max(a, skip)  # the end token taken into the previous segment's tail row
            if a >= e:
                continue
            n = used_streams(tokens[a:e], self.pad_id) if kind == AUDIO_TGT else 1
            L = e - a
            block = np.full((L + self.tail_rows(kind, n), S), -1, dtype=np.int64)
            block[:L] = (np.arange(a, e)[:, None] * S + np.arange(S)) if n == 1 else -1
            if n > 1:
                block[:L, 0] = np.arange(a, e) * S
                block[1:, 1:n] = np.arange(a, e)[:, None] * S + np.arange(1, n)
            bk = np.full(len(block), kind, dtype=np.int64)
            pos[a:e] = n_out + np.arange(L)
            if n > 1 and e < T and kinds[e] == SPECIAL:
                block[L, 0], bk[L], pos[e], skip = e * S, SPECIAL, n_out + L, e + 1
            rows.append(block)
            out_kinds.append(bk)
            n_out += len(block)
        if not rows:
            return np.zeros((0, S), dtype=np.int64), np.zeros(0, dtype=np.int64), pos
        return np.concatenate(rows), np.concatenate(out_kinds), pos

    def tail_rows(self, kind: int, n: int) -> int:
        return 1 if kind == AUDIO_TGT and n > 1 else 0

    def step_slots(self, j: int, n: int, end: int | None) -> list[Slot]:
        out = [Slot(0, 0, j, True)] if end is None else []
        return out + [Slot(k, k, j - 1) for k in range(1, n) if j >= 1 and (end is None or j - 1 < end)]


def test_layout_of_the_plugin():
    """The layout is the one drawn in the module docstring, and reverting it gives the input back."""
    pat = PATTERNS.get(NAME)(3, pad_id=0)
    M, E, t0 = 5, 1, 7
    tok = torch.tensor([[[M, 0, 0], [10, 20, 30], [11, 21, 31], [12, 22, 32], [E, 0, 0], [t0, 0, 0]]])
    kinds = torch.tensor([[SPECIAL, AUDIO_TGT, AUDIO_TGT, AUDIO_TGT, SPECIAL, TEXT_TGT]])
    lay = pat.build(tok, torch.ones(tok.shape), kinds, torch.tensor([6]))
    want = [[M, 0, 0], [10, 0, 0], [11, 20, 30], [12, 21, 31], [E, 22, 32], [t0, 0, 0]]
    assert lay.tokens[0].tolist() == want
    assert lay.kinds[0].tolist() == [SPECIAL, AUDIO_TGT, AUDIO_TGT, AUDIO_TGT, SPECIAL, TEXT_TGT]
    assert torch.equal(pat.revert(lay.tokens, lay, 6), tok)
    assert pat.segment_rows(AUDIO_TGT, 3, 3) == 4 and pat.segment_rows(SPECIAL, 1, 1) == 1


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config(NAME), vocab)
    losses = train(model, collate(toy_examples(vocab, 4)), 150)
    return model, vocab, losses


def test_plugin_trains_and_decodes_what_it_learned(trained, tmp_path):
    model, vocab, losses = trained
    assert losses[-1] < 0.05 < losses[0]
    assert segment_rows_fn(model)(AUDIO_TGT, np.array([0, 5]), 2).tolist() == [0, 6]  # the trainer's budget
    prompts = toy_examples(vocab, 4, with_targets=False)
    full = toy_examples(vocab, 4)
    cfg = DecodeConfig(max_len=20)
    outs = generate(model, collate(prompts), cfg)
    for out, ex in zip(outs, full):
        assert np.array_equal(out, ex.tokens[ex.kinds >= 4]), (ex.id, out.tolist())
    assert all(np.array_equal(a, generate(model, collate([p]), cfg)[0]) for a, p in zip(outs, prompts))
    model.save_pretrained(tmp_path / "m")  # the real model-dir writer and loader
    loaded = SpeechLM.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.pattern, Lag1Pattern)
    assert all(np.array_equal(a, b) for a, b in zip(outs, generate(loaded, collate(prompts), cfg)))


def test_plugin_streams_frames_as_they_become_final(trained):
    """A frame is final one step after its stream 0 (lag 1): streamed blocks join to the whole decode."""
    model, vocab, _ = trained
    prompt = collate([p for p in toy_examples(vocab, 4, with_targets=False) if p.task == "plain_tts"][3:])
    cutter, blocks = FrameCutter(), []
    hyp = sample_decode(model, prompt, DecodeConfig(max_len=20),
                        on_step=lambda active, states: blocks.append(cutter.new_frames(states[0])))[0][0]
    frames = hyp.segments[0].frames
    assert len(frames) >= 3
    assert [len(b) for b in blocks[:3]] == [0, 1, 1]  # step 0: stream 0 of frame 0; step 1 completes it
    assert np.array_equal(np.concatenate(blocks), frames)


def test_plugin_decoding_feeds_the_progress_input_training_sees():
    """With the progress input, greedy decoding of a length the length head fixes equals the
    teacher-forced argmax at every generated slot (the layout's progress rows, tail row included,
    are what decoding gives)."""
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config(NAME, length_weight=1.0, progress=True), vocab).eval()
    with torch.no_grad():  # make the progress input matter, and fix the predicted length (2 rows per phone)
        model.progress.proj.weight.normal_(0.0, 1.0)
        model.length_head[-1].weight.zero_()
        model.length_head[-1].bias.fill_(math.log(2.0))
    prompts = collate(toy_examples(vocab, 3, with_targets=False, tasks=("plain_tts",)))
    outs = generate(model, prompts, DecodeConfig(min_len_prior=1.0, max_len_prior=1.0))
    assert [len(o) for o in outs] == [2 * n for n in (prompts.kinds == 2).sum(1).tolist()]
    masker = Masker(model)
    for b, frames in enumerate(outs):
        n = int(prompts.lengths[b])
        tokens = torch.cat([prompts.tokens[b, :n], torch.as_tensor(frames),
                            torch.tensor([[vocab.eos_id, vocab.pad_id]])])[None]
        kinds = torch.cat([prompts.kinds[b, :n], torch.full((len(frames),), AUDIO_TGT, dtype=prompts.kinds.dtype),
                           torch.tensor([SPECIAL], dtype=prompts.kinds.dtype)])[None]
        with torch.no_grad():
            prep = model.prepare(tokens, torch.ones(tokens.shape), kinds, torch.tensor([tokens.shape[1]]),
                                 prompts.prefix_lens[b : b + 1])
            h = model.encode(prep)[0]
        assert prep.progress[1][0].max() == len(frames)  # the segment's rows got the progress input
        lay = prep.layout
        checked = 0
        for q in range(int(lay.pos[0, n - 1]) + 1, int(lay.lengths[0])):  # the target block's rows
            for k in range(2):
                if lay.kinds[0, q] == PAD or int(lay.src[0, q, k]) < 0 or int(lay.tokens[0, q, k]) == vocab.eos_id:
                    continue
                logits = model.logits(h[q - 1][None], k)[0]
                logits = logits.masked_fill(~masker.mask(k, ("codec", k, ()), logits.device), float("-inf"))
                assert int(masker.to_global(k, logits.argmax()[None])[0]) == int(lay.tokens[0, q, k]), (b, q, k)
                checked += 1
        assert checked == 2 * len(frames)


def test_keys_of_other_strategies_are_refused():
    with pytest.raises(ConfigError, match="local_dim: only the multiscale strategy reads it"):
        ModelConfig(strategy=NAME, local_dim=32).validate()
    with pytest.raises(ConfigError, match="nar_weight: only the ar_nar strategy"):
        ModelConfig(strategy=NAME, nar_weight=0.5).validate()
    assert ModelConfig(strategy="multiscale").validate().local_dim == 128  # its default where it applies
