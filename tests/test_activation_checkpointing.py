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


def test_train_config_switch_reaches_the_builtin_backbone(tmp_path):
    """`activation_checkpointing: true` in the train config (what the 1.7B recipe sets) turns it on
    in the built-in backbone, and training gives the same losses."""
    from speechlm.conf import resolve_config
    from speechlm.config import load_config
    from speechlm.data.dataset import DataSpec
    from speechlm.data.synthetic import make_dump, synthetic_vocab
    from speechlm.models import ModelConfig
    from speechlm.train.config import load_train_config
    from speechlm.train.trainer import Trainer

    make_dump(tmp_path / "asr", "asr", 12, seed=0, frames=(10, 30))
    losses = {}
    for ckpt in (False, True):
        cfg = load_train_config(resolve_config("train", "tiny"), {
            "max_steps": 2, "valid_every": 0, "save_every": 0, "progress_bar": False, "tensorboard": False,
            "plot": False, "activation_checkpointing": ckpt})
        tr = Trainer(cfg, load_config(ModelConfig, resolve_config("model", "tiny")), synthetic_vocab(["asr"]),
                     [DataSpec.parse(f"asr:a:{tmp_path / 'asr'}:1")], str(tmp_path / f"run{int(ckpt)}")).setup()
        assert tr.model.backbone.activation_checkpointing is ckpt
        batches = [b for b, _ in zip(iter(_batches(tr)), range(2))]
        losses[ckpt] = [tr.train_step([b]) for b in batches]
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)


def _batches(tr):
    from speechlm.data.loader import train_batches

    return train_batches(tr.train_data, tr.sampler, 0, 0, 1, 0, tr.vocab.pad_id)
