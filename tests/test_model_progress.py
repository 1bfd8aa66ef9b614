"""The target progress input (model.progress): where training puts it, that decoding feeds the
same input step by step, and that the length it is given sets the output length."""
from __future__ import annotations

import math

import pytest
import torch

from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import AUDIO_TGT, SPECIAL
from speechlm.infer import DecodeConfig, generate
from speechlm.infer.steps import Masker
from speechlm.models import SpeechLM
from speechlm.models.progress import progress_features
from test_model_helpers import tiny_config, toy_examples, toy_vocab


def progress_model(strategy: str, vocab, rows_per_phone: float = 2.0) -> SpeechLM:
    """A tiny model with the progress input made to matter (random weights instead of the zero
    start) and a length head that predicts ``rows_per_phone`` target rows per phone."""
    torch.manual_seed(0)
    model = SpeechLM(tiny_config(strategy, length_weight=1.0, progress=True), vocab).eval()
    with torch.no_grad():
        model.progress.proj.weight.normal_(0.0, 1.0)
        model.length_head[-1].weight.zero_()
        model.length_head[-1].bias.fill_(math.log(rows_per_phone))
    return model


def test_progress_starts_at_zero_and_needs_a_length_head():
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    plain = SpeechLM(tiny_config("delay", length_weight=1.0), vocab)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", length_weight=1.0, progress=True), vocab)
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.equal(plain(batch).loss, model(batch).loss)  # added last, zero: the same start
    with pytest.raises(ConfigError, match="length head"):
        tiny_config("delay", progress=True).validate()
    with pytest.raises(ConfigError, match="flat"):
        tiny_config("flat", progress=True, length_weight=1.0).validate()


def test_training_layout_gives_progress_to_whole_audio_targets_only():
    vocab = toy_vocab(3)
    model = progress_model("delay", vocab)
    batch = collate(toy_examples(vocab, 2, n_streams=3))
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    j, L = prep.progress
    for b, task in enumerate(batch.tasks):
        n_frames = int((batch.kinds[b] == AUDIO_TGT).sum())
        on = (L[b] > 0).nonzero()[:, 0]
        if task == "asr":  # text target: no progress input
            assert len(on) == 0
            continue
        # delay, 3 streams: the frames, the end token's row and one tail row, numbered 0..L+1
        assert j[b, on].tolist() == list(range(n_frames + 2)) and set(L[b, on].tolist()) == {n_frames}
        assert prep.kinds[b, on[n_frames]] == SPECIAL and int(prep.kinds[b, on[0] - 1]) == SPECIAL
    f = progress_features(torch.tensor([0, 4, 9]), torch.tensor([10, 10, 0]))
    assert f[2].abs().sum() == 0 and f[0, 0] == pytest.approx(0.1) and f[1, -1] == 0


@pytest.mark.parametrize("strategy,scale", [("delay", 1.0), ("parallel", 1.0), ("delay", 1.5)])
def test_decoding_feeds_the_progress_training_sees(strategy, scale):
    """Greedy decoding of a length fixed by the length head (times ``length_scale``) equals the
    argmax of the teacher-forced model (which computes the progress input from the layout, with the
    output's length) at every generated slot: decoding gave the model that same length."""
    vocab = toy_vocab(2)
    model = progress_model(strategy, vocab)
    prompts = collate(toy_examples(vocab, 3, with_targets=False, tasks=("plain_tts",)))
    cfg = DecodeConfig(min_len_prior=1.0, max_len_prior=1.0, length_scale=scale)
    outs = generate(model, prompts, cfg)
    phones = (prompts.kinds == 2).sum(1).tolist()
    assert [len(o) for o in outs] == [round(2 * scale * n) for n in phones]
    masker = Masker(model)
    offsets = [vocab.offset("codec", k) for k in range(2)]
    for b, frames in enumerate(outs):
        n = int(prompts.lengths[b])
        tokens = torch.cat([prompts.tokens[b, :n], torch.as_tensor(frames)[:, :2],
                            torch.tensor([[vocab.eos_id, vocab.pad_id]])])[None]
        kinds = torch.cat([prompts.kinds[b, :n], torch.full((len(frames),), AUDIO_TGT, dtype=prompts.kinds.dtype),
                           torch.tensor([SPECIAL], dtype=prompts.kinds.dtype)])[None]
        with torch.no_grad():
            prep = model.prepare(tokens, torch.ones(tokens.shape), kinds, torch.tensor([tokens.shape[1]]),
                                 prompts.prefix_lens[b : b + 1])
            h = model.backbone(model.embed_prepared(prep), None, model.attention_mask(prep))[0]
        marker = int(prep.layout.pos[0, n - 1])
        delay = strategy == "delay"
        for k in range(2):
            rows = range(k, len(frames) + k) if delay else range(len(frames))
            for r in rows:
                logits = model.head.logits(h[marker + r][None], k)[0]
                logits = logits.masked_fill(~masker.mask(k, ("codec", k, ()), logits.device), float("-inf"))
                want = int(frames[r - k if delay else r, k]) - offsets[k]
                got = int(masker.to_global(k, logits.argmax()[None])[0]) - offsets[k]
                assert got == want, (b, k, r)
    with torch.no_grad():
        model.progress.proj.weight.zero_()
    assert any((a != b).any() for a, b in zip(outs, generate(model, prompts, cfg))), "the input matters"


def test_length_scale_must_be_positive():
    with pytest.raises(ConfigError, match="length_scale"):
        DecodeConfig(length_scale=0).validate()
