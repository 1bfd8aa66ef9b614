"""Activation checkpointing is one switch (the train config's ``activation_checkpointing``) that
works with both backbones: each layer runs again in the backward pass, and the gradients do not
change."""
from __future__ import annotations

import pytest
import torch

from speechlm.data.batch import collate
from speechlm.models import SpeechLM
from speechlm.train.build import enable_activation_checkpointing
from test_model_helpers import tiny_config, toy_examples, toy_vocab


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama saved as a user's local LLM directory is."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256))
    d = tmp_path_factory.mktemp("llama")
    lm.save_pretrained(d)
    return d


def _mlps(model: SpeechLM) -> list[torch.nn.Module]:
    """The MLP of every layer: inside what a checkpointed layer recomputes (HF checkpoints the
    layer's class ``forward``, so a patch of the instance's own ``forward`` would sit outside)."""
    layers = model.backbone.layers if model.config.backbone == "builtin" else model.backbone.body.layers
    return [layer.mlp for layer in layers]


@pytest.mark.parametrize("backbone", ["builtin", "hf"])
def test_checkpointing_recomputes_layers_and_keeps_gradients(backbone, llama_dir):
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 2))
    kw = {"backbone": "hf", "hf_path": str(llama_dir)} if backbone == "hf" else {}
    grads, losses = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = SpeechLM(tiny_config("delay", cond_reduction=2, **kw), vocab).train()
        if ckpt:
            enable_activation_checkpointing(model)
        calls = []
        for mlp in _mlps(model):
            forward = mlp.forward
            mlp.forward = lambda *a, _f=forward, **k: calls.append(1) or _f(*a, **k)
        out = model(batch)
        assert len(calls) == len(_mlps(model))  # the forward pass: once per layer
        out.loss.backward()
        # checkpointed: every layer runs once more in the backward pass, to rebuild its activations
        assert len(calls) == len(_mlps(model)) * (2 if ckpt else 1)
        losses.append(float(out.loss.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == losses[1]
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-5), name


def test_checkpointing_is_off_in_eval_and_with_a_cache():
    """Decoding (no gradients, a KV cache) never recomputes."""
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab)
    enable_activation_checkpointing(model)
    calls = []
    layer = model.backbone.layers[0]
    forward = layer.forward
    layer.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    with torch.no_grad():
        model(collate(toy_examples(vocab, 1)))
    assert len(calls) == 1


def test_checkpointing_refuses_guided_attention():
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay", guided_attn_weight=1.0), vocab)
    with pytest.raises(ValueError, match="guided_attn_weight"):
        enable_activation_checkpointing(model)
