"""TrainConfig: strict YAML, shipped presets, flag overrides, precision choice, old keys."""
from __future__ import annotations

import pytest
import torch

from speechlm.conf import builtin_dir, resolve_config
from speechlm.config import ConfigError
from speechlm.train.config import TrainConfig, load_train_config, upgrade_run_config
from speechlm.utils.precision import autocast, autocast_dtype

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
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="fp8"):
        autocast_dtype("fp8", cpu)
    x = torch.randn(4, 4)
    with autocast("bf16", cpu):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", cpu):
        assert (x @ x).dtype == torch.float32


def test_renamed_keys_name_the_new_key(tmp_path):
    """One word, one meaning: the DDP/FSDP/DeepSpeed choice is `distributed` ("strategy" is the
    stream layout), the tqdm bar is `progress_bar` ("progress" is the model's input)."""
    old = tmp_path / "old.yaml"
    for key, value, new in (("strategy", "fsdp", "distributed"), ("progress", "false", "progress_bar")):
        old.write_text(f"{key}: {value}\n")
        with pytest.raises(ConfigError, match=f"'{key}' was renamed to '{new}'"):
            load_train_config(old)
        with pytest.raises(ConfigError, match=f"renamed to '{new}'"):
            load_train_config(None, {key: value})
    old.write_text("distributed: fsdp\nprogress_bar: false\n")
    cfg = load_train_config(old)
    assert cfg.distributed == "fsdp" and cfg.progress_bar is False
    old.write_text("distributed: horovod\n")
    with pytest.raises(ConfigError, match="distributed"):
        load_train_config(old)


def test_old_run_config_upgrades_to_the_new_layout():
    """A run dir written by an older version (configs under train/model, old key names, dropped
    keys) compares equal to the same options written now, so it resumes without a false change."""
    from speechlm.config import to_dict
    from speechlm.models.config import ModelConfig
    from speechlm.train.rundir import config_changes

    new = {"train_config": to_dict(TrainConfig()), "model_config": to_dict(ModelConfig()), "data": ["a:b:c:1"]}
    old_train = {("strategy" if k == "distributed" else "progress" if k == "progress_bar" else k): v
                 for k, v in new["train_config"].items()}
    old = {"train": {**old_train, "pack": False},
           "model": {**new["model_config"], "autocast": "auto", "grad_checkpointing": False}, "data": ["a:b:c:1"]}
    assert config_changes(old, new)  # as stored, everything differs
    assert config_changes(upgrade_run_config(old), new) == {}
