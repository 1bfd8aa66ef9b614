"""A run's ``config.yaml`` holds the options of ``speechlm train`` as resolved: fed back with
``--config`` it trains the same run again (same losses, same weights), and flags still win."""
from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from speechlm.cli import main
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.train.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    make_dump(root / "asr", "asr", 16, seed=0, frames=(10, 30))
    synthetic_vocab(["asr"]).save(root / "token_list.json")
    return root


def _losses(run) -> list[float]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["step_loss"] for r in rows if "step_loss" in r]


def test_config_yaml_fed_back_trains_the_same_run(dumps, tmp_path):
    first = tmp_path / "first"
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--valid-data", f"asr:a:{dumps / 'asr'}",
                 "--vocab", str(dumps / "token_list.json"), "--model-config", "tiny", "--train-config", "tiny",
                 "--out-dir", str(first), "--max-steps", "4", "--lr", "0.002", "--valid-every", "0",
                 "--set", "log_every=1", "--set", "tensorboard=false", "--set", "plot=false",
                 "--set", "progress_bar=false", "--threads", "1"]) == 0
    run_config = yaml.safe_load((first / "config.yaml").read_text())
    assert run_config["train_config"]["lr"] == 0.002 and run_config["train_config"]["log_every"] == 1
    assert run_config["model_config"]["dim"] > 0 and run_config["data"] == [f"asr:a:{dumps / 'asr'}:1.0"]

    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.yaml"), "--out-dir", str(again)]) == 0
    assert (again / "config.yaml").read_text() == (first / "config.yaml").read_text()
    assert len(_losses(first)) == 4 and _losses(again) == _losses(first)
    a = load_file(latest_checkpoint(first / "checkpoints") / "model.safetensors")
    b = load_file(latest_checkpoint(again / "checkpoints") / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    # a flag wins over the file (here the budget), the rest comes from the file
    more = tmp_path / "more"
    assert main(["train", "--config", str(first / "config.yaml"), "--out-dir", str(more), "--max-steps", "5"]) == 0
    assert len(_losses(more)) == 5
    assert yaml.safe_load((more / "config.yaml").read_text())["train_config"]["lr"] == 0.002


def test_an_old_runs_config_yaml_feeds_back_too(dumps, tmp_path):
    """A run dir written before the options were renamed (train/model sections, strategy, progress,
    pack, the model's autocast) still trains again with --config."""
    first = tmp_path / "first"
    common = ["--out-dir", str(first), "--max-steps", "2", "--valid-every", "0", "--threads", "1",
              "--set", "tensorboard=false", "--set", "plot=false", "--set", "log_every=1"]
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(dumps / "token_list.json"),
                 "--model-config", "tiny", "--train-config", "tiny", *common]) == 0
    new = yaml.safe_load((first / "config.yaml").read_text())
    train = {{"distributed": "strategy", "progress_bar": "progress"}.get(k, k): v for k, v in new.pop("train_config").items()}
    old = {"train": {**train, "pack": False}, "model": {**new.pop("model_config"), "autocast": "none"}, **new}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    again = tmp_path / "again"
    assert main(["train", "--config", str(tmp_path / "old.yaml"), "--out-dir", str(again)]) == 0
    assert _losses(again) == _losses(first) and len(_losses(first)) == 2
