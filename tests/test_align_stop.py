"""Alignment-aware stopping: the CTC forward pass over the prompt's phones tracks where the
generated speech is in the text, and the end token waits until the text is spoken."""
from __future__ import annotations

import pytest
import torch

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate
from speechlm.infer.align_stop import AlignStop
from speechlm.models import SpeechLM
from speechlm.tasks import load_template
from test_model_helpers import N_PHONE, tiny_config, toy_vocab

DIM = 64


def model_and_prompts(phone_lists):
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", dim=DIM, align_ctc_weight=1.0, align_ctc_tokenizer="phone"), vocab).eval()
    # the head reads its class off a one-hot hidden state: column c of h says "CTC class c"
    with torch.no_grad():
        model.align_ctc_head.weight.zero_()
        model.align_ctc_head.bias.zero_()
        for c in range(N_PHONE + 1):
            model.align_ctc_head.weight[c, c] = 30.0
    tpl = load_template("plain_tts")
    exs = [build_example(f"u{i}", tpl, {"phones": torch.tensor(p)[:, None].numpy()}, vocab, 2, with_targets=False)
           for i, p in enumerate(phone_lists)]
    return model, collate(exs)


def says(*classes: int) -> list[torch.Tensor]:
    """Hidden states whose CTC posterior is (almost) one-hot on ``class`` (0 = blank, p + 1 = phone p)."""
    out = []
    for c in classes:
        h = torch.zeros(1, 1, DIM)
        h[0, 0, c] = 1.0
        out.append(h)
    return out


def test_ready_only_after_every_phone_was_heard():
    model, prompts = model_and_prompts([[1, 2, 3]])
    stop = AlignStop(model, prompts, threshold=0.5)
    assert stop.ready() == [False]
    seen = []
    for h in says(0, 2, 2, 0, 3, 3):  # blank, phone 1, phone 2 (phone 3 not yet)
        stop.update(h)
        seen.append(stop.ready()[0])
    assert not any(seen)
    stop.update(says(4)[0])  # phone 3: the text is complete
    assert stop.ready() == [True]


def test_a_repeated_phone_needs_a_blank_between():
    model, prompts = model_and_prompts([[2, 2]])
    stop = AlignStop(model, prompts, threshold=0.5)
    for h in says(3, 3, 3):  # one long phone 2: only the first of the two
        stop.update(h)
    assert stop.ready() == [False]
    for h in says(0, 3):  # blank, then phone 2 again
        stop.update(h)
    assert stop.ready() == [True]


def test_rows_leave_the_tracker_independently():
    model, prompts = model_and_prompts([[1], [1, 2, 3, 4]])
    stop = AlignStop(model, prompts, threshold=0.5)
    stop.update(torch.cat(says(2, 2)))
    assert stop.ready() == [True, False]
    stop.select(torch.tensor([1]))  # row 0 finished
    for h in says(3, 4, 5):
        stop.update(h)
    assert stop.ready() == [True]


def test_generation_waits_for_the_alignment():
    model, prompts = model_and_prompts([[1, 2, 3], [4, 5]])
    with torch.no_grad():  # the alignment head hears only blanks: the text is never finished
        model.align_ctc_head.bias[0] = 100.0
    outs = generate(model, prompts, DecodeConfig(search="sample", seed=0, max_len=30, align_stop=0.5))
    assert [len(o) for o in outs] == [30, 30]
    bare = SpeechLM(tiny_config("delay", dim=DIM), model.vocab)
    with pytest.raises(ValueError, match="align_ctc_weight"):
        generate(bare, prompts, DecodeConfig(align_stop=0.5))
