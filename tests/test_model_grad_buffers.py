"""The training step's large gradient buffers: the stream embedding looks all streams up at once,
the loss reads the output head's row ranges from one split of its weight
(``OutputHead.shared_rows``) and the depth head's output per stream from one unbind, so the
backward pass zero-fills one ``[V, D]`` buffer instead of one per stream and range (and no
``[N, S, D]`` one per stream), and the gradients are bit for bit those of per-range slices."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.profiler import profile

from speechlm.data.batch import collate
from speechlm.models import SpeechLM
from test_model_helpers import tiny_config, toy_examples, toy_vocab


def vocab_fills(prof, shape: list[int]) -> int:
    """Zero fills of ``shape`` tensors (``zero_`` and the ``fill_`` it may call: at most 2 per buffer)."""
    return sum(1 for e in prof.events()
               if e.name in ("aten::zero_", "aten::fill_") and e.input_shapes and e.input_shapes[0] == shape)


def grads(model: SpeechLM, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("strategy", ["delay", "multiscale", "parallel"])
def test_shared_rows_give_the_per_range_gradients_and_fill_one_buffer(strategy, monkeypatch):
    torch.manual_seed(0)
    vocab = toy_vocab(3)
    model = SpeechLM(tiny_config(strategy), vocab)
    batch = collate(toy_examples(vocab, 4, 3))
    V, D = model.head.weight.shape
    with profile(record_shapes=True) as prof:
        shared = grads(model, batch)
    fills = vocab_fills(prof, [V, D])
    assert fills <= 2, f"{fills} vocabulary-sized zero fills in one training step"
    S = model.pattern.model_streams
    depth_out = [e for e in prof.events() if e.name in ("aten::zero_", "aten::fill_") and e.input_shapes
                 and len(e.input_shapes[0]) == 3 and e.input_shapes[0][1:] == [S, D]]
    assert not depth_out  # multiscale: the depth head's [N, S, D] output is unbound, not indexed per stream

    monkeypatch.setattr(type(model.head), "shared_rows", lambda self: contextlib.nullcontext())
    with profile(record_shapes=True) as prof:
        sliced = grads(model, batch)
    assert vocab_fills(prof, [V, D]) >= 6  # each stream's and group's slice filled its own buffer
    assert shared.keys() == sliced.keys()
    for name in shared:
        assert torch.equal(shared[name], sliced[name]), name


def test_stream_embedding_is_the_per_stream_sum():
    torch.manual_seed(0)
    vocab = toy_vocab(3)
    model = SpeechLM(tiny_config("delay"), vocab)
    emb = model.embed
    tokens = torch.randint(0, len(vocab), (2, 5, 3))
    tokens[0, 1, 2] = vocab.pad_id  # <pad> in a stream > 0 adds nothing
    ref = emb.emb(tokens[..., 0])
    for k in (1, 2):
        ref = ref + emb.emb(tokens[..., k]) * (tokens[..., k] != vocab.pad_id)[..., None].float()
    assert torch.equal(emb(tokens), ref)
