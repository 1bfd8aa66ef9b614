"""TrainConfig: strict YAML, shipped presets, flag overrides, precision choice."""
from __future__ import annotations

import pytest
import torch

from speechlm.conf import builtin_dir, resolve_config
from speechlm.config import ConfigError
from speechlm.train.build import resolve_precision
from speechlm.train.config import TrainConfig, load_train_config

PRESETS = sorted(builtin_dir("train").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_shipped_presets_load(path):
    assert isinstance(load_train_config(path), TrainConfig)


def test_strict_keys_types_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 10\n")
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        load_train_config(bad)
    bad.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr"):
        load_train_config(bad)
    bad.write_text("precision: fp8\n")
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(bad)
    bad.write_text("max_steps: null\n")
    with pytest.raises(ConfigError, match="budget"):
        load_train_config(bad)
    cfg = load_train_config(resolve_config("train", "tiny"), {"max_steps": 3, "lr": None})
    assert cfg.max_steps == 3 and cfg.lr == 3e-3
    assert load_train_config(None, {"max_train_tokens": 10, "max_steps": None}).max_train_tokens == 10


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
