"""Attention-based stopping: the alignment head's focus over the text holds the end of the audio
back until the text is read and ends it when the focus jumps back; the head's attention recorded
during cached decoding equals a full forward's."""
from __future__ import annotations

import pytest
import torch

from speechlm.data.batch import collate
from speechlm.infer import DecodeConfig, generate
from speechlm.infer.attn_stop import AttnStop
from speechlm.infer.context import DecodeContext
from speechlm.models import SpeechLM
from test_model_helpers import tiny_config, toy_examples, toy_vocab


def focus_on(key: int, n_keys: int = 10) -> torch.Tensor:
    p = torch.full((2, 1, n_keys), 0.01)
    p[:, 0, key] = 0.9
    return p


def test_focus_holds_then_ends_the_row():
    text = torch.zeros(2, 10, dtype=torch.bool)
    text[0, 2:7] = True  # row 0 reads 5 text keys; row 1 has no text (never held, never ended)
    stop = AttnStop(text, threshold=0.9)
    assert stop.ready() == [False, True]
    for key in (2, 3, 4, 5):  # focus walks through the text, not yet at its end
        stop.update(focus_on(key), text)
        assert stop.ready() == [False, True] and stop.jumped_back() == [False, False]
    stop.update(focus_on(6), text)  # the last text key: the row may end
    assert stop.ready() == [True, True] and stop.jumped_back() == [False, False]
    stop.update(focus_on(3), text)  # back to the second key: the model started over
    assert stop.jumped_back() == [True, False]
    stop.select(torch.tensor([1]))
    assert stop.ready() == [True] and stop.jumped_back() == [False]


def guided_model(vocab):
    torch.manual_seed(0)
    return SpeechLM(tiny_config("delay", guided_attn_weight=1.0), vocab).eval()


def test_recorded_attention_of_a_cached_step_equals_the_full_forward():
    vocab = toy_vocab(2)
    model = guided_model(vocab)
    prompts = collate(toy_examples(vocab, 3, with_targets=False, tasks=("plain_tts",)))  # mixed lengths
    head = model.guided_attn
    with torch.no_grad():
        ctx, _ = DecodeContext.prefill(model, prompts)
        x = model.embed(torch.full((3, 1, 2), vocab.pad_id))
        head.record = True
        ctx.step(x)
        stepped = head.probs[:, -1].clone()
        assert stepped.shape[-1] == ctx.text_keys.shape[1]
        # the same rows without a cache: recompute everything and read the last position
        ref, _ = DecodeContext.prefill(model, prompts, use_cache=False)
        ref.step(x)
        head.record = False
    assert torch.allclose(stepped, head.probs[:, -1], atol=1e-5)
    assert bool(ctx.text_keys.any(1).all())  # every toy TTS prompt has phone keys


def test_generation_with_attn_stop_needs_the_guided_head():
    vocab = toy_vocab(2)
    prompts = collate(toy_examples(vocab, 2, with_targets=False, tasks=("plain_tts",)))
    outs = generate(guided_model(vocab), prompts, DecodeConfig(search="sample", max_len=25, attn_stop=0.9))
    assert all(1 <= len(o) <= 25 for o in outs)
    with pytest.raises(ValueError, match="guided_attn_weight"):
        generate(SpeechLM(tiny_config("delay"), vocab).eval(), prompts, DecodeConfig(attn_stop=0.9))
