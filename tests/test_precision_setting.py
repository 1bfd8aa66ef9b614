"""Precision is set once: the train config's ``precision`` for training, the decode config's
``precision`` for decoding. Model configs of older versions (``autocast``, ``grad_checkpointing``)
still load, with a warning, and an old model decodes in the precision its ``autocast`` asked for."""
from __future__ import annotations

import logging

import pytest
import torch
import yaml

from speechlm.config import ConfigError, from_dict, load_config, to_dict
from speechlm.data.batch import collate
from speechlm.infer.config import DecodeConfig
from speechlm.infer.generate import generate
from speechlm.models import ModelConfig, SpeechLM
from speechlm.models.config import legacy_decode_precision
from test_model_helpers import tiny_config, toy_examples, toy_vocab


def test_old_model_config_keys_load_with_a_warning(tmp_path, caplog):
    old = to_dict(tiny_config("delay"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**old, "autocast": "bf16", "grad_checkpointing": True}))
    with caplog.at_level(logging.WARNING):
        cfg = load_config(ModelConfig, tmp_path / "config.yaml")
    assert to_dict(cfg) == old  # dropped, nothing else changed
    text = caplog.text
    assert "autocast" in text and "decode config's `precision`" in text
    assert "grad_checkpointing" in text and "activation_checkpointing" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # what every old model dir stores: no warning
        from_dict(ModelConfig, {**old, "autocast": "none", "grad_checkpointing": False})
    assert not caplog.text
    with pytest.raises(ConfigError, match="unknown key 'autocasts'"):
        from_dict(ModelConfig, {"autocasts": "bf16"})


@pytest.mark.parametrize("stored, expected", [("none", "fp32"), ("bf16", "bf16"), ("auto", "auto"), (None, None)])
def test_old_model_dir_decodes_in_its_autocast(tmp_path, stored, expected):
    cfg = to_dict(tiny_config("delay"))
    if stored is not None:
        cfg["autocast"] = stored
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert legacy_decode_precision(tmp_path) == expected


def test_decode_precision_is_validated_and_used():
    with pytest.raises(ConfigError, match="precision"):
        DecodeConfig(precision="fp8").validate()
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab).eval()
    prompts = collate(toy_examples(vocab, 1, with_targets=False, tasks=("asr",)))
    seen = []
    model.backbone.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    generate(model, prompts, DecodeConfig(max_len=3))
    assert set(seen) == {torch.float32}  # the default: fp32
    seen.clear()
    generate(model, prompts, DecodeConfig(max_len=3, precision="bf16"))
    assert set(seen) == {torch.bfloat16}


def test_env_overrides_the_cpus_bf16_detection_for_auto(monkeypatch):
    from speechlm.utils.precision import autocast_dtype

    monkeypatch.setenv("SPEECHLM_CPU_BF16", "0")
    assert autocast_dtype("auto", "cpu") is None  # as on a CPU without native bf16
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16  # an explicit precision is kept
    monkeypatch.setenv("SPEECHLM_CPU_BF16", "1")
    assert autocast_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setenv("SPEECHLM_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="SPEECHLM_CPU_BF16 is 0 or 1, got 'yes'"):
        autocast_dtype("auto", "cpu")
