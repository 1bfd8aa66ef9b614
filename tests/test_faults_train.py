"""Planted faults in training and checkpoints (issue 14): each test plants one fault a real user
meets (a crafted pickle, a truncated file, a full disk, changed options, a reordered vocabulary,
a non-safetensors weights file, ``lr: 1e-3``, moved tokenizer files) and checks what the run does."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechlm.conf import resolve_config
from speechlm.config import load_config
from speechlm.data.dataset import DataSpec
from speechlm.data.synthetic import TOKENIZERS, make_dump, synthetic_vocab
from speechlm.models import ModelConfig, SpeechLM
from speechlm.train.checkpoint import latest_checkpoint, list_checkpoints
from speechlm.train.config import load_train_config
from speechlm.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = str(resolve_config("model", "tiny"))
TRAIN = str(resolve_config("train", "tiny"))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_train")
    make_dump(root / "asr", "asr", 24, seed=0, frames=(10, 40))
    synthetic_vocab(["asr"]).save(root / "token_list.json")
    return root


def _trainer(root, out, vocab=None, stop=None, init_from=None, **over):
    opts = {"max_steps": 4, "save_every": 2, "valid_every": 0, "batch_tokens": 600, "pool_size": 60,
            "progress_bar": False, "log_every": 2, "tensorboard": False, "plot": False, **over}
    cfg = load_train_config(TRAIN, opts)
    return Trainer(cfg, load_config(ModelConfig, TINY), vocab or synthetic_vocab(["asr"]),
                   [DataSpec.parse(f"asr:a:{root / 'asr'}:1")], str(out), init_from=init_from,
                   stop_after_steps=stop).setup()


def _cli(dumps, out, *extra):
    from speechlm.cli import main

    return main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(dumps / "token_list.json"),
                 "--model-config", TINY, "--train-config", TRAIN, "--out-dir", str(out), "--valid-every", "0",
                 "--save-every", "2", "--set", "tensorboard=false", "--set", "plot=false",
                 "--set", "progress_bar=false", *extra])


def _reseal(ckpt: Path) -> None:
    """Rewrite the checkpoint's manifest to match its files (what an attacker would do too)."""
    marker = json.loads((ckpt / "COMPLETE").read_text())
    marker["files"] = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size,
                                                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                       for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != "COMPLETE"}
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


class _Evil:
    """Unpickling this creates ``path`` (stands for any code a crafted checkpoint could run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- case 8: no pickle from a checkpoint is executed -------------------------------------------
def test_case8_crafted_pickle_in_checkpoint_is_not_executed(dumps, tmp_path):
    out = tmp_path / "run"
    _trainer(dumps, out, max_steps=2).train()
    ckpt = latest_checkpoint(out / "checkpoints")
    for victim in ("optimizer.pt", "rng/rank_0.pt"):
        good = (ckpt / victim).read_bytes()
        marker = tmp_path / f"pwned_{victim.replace('/', '_')}"
        torch.save({"state": _Evil(str(marker))}, ckpt / victim)
        _reseal(ckpt)  # a valid manifest does not make a pickle trusted
        with pytest.raises(Exception) as err:
            _trainer(dumps, out, max_steps=3)
        assert not marker.exists(), f"the crafted {victim} ran code"
        from speechlm.train.integrity import UnsafeCheckpointError

        assert isinstance(err.value, UnsafeCheckpointError)  # a ValueError: the CLI prints one line
        assert str(ckpt / victim) in str(err.value) and "not executed" in str(err.value)
        (ckpt / victim).write_bytes(good)
        _reseal(ckpt)
    # the intact checkpoint resumes, and no source file asks torch.load for unsafe unpickling
    assert _trainer(dumps, out, max_steps=3).step == 2
    found = subprocess.run(["grep", "-rn", "weights_only=False", str(REPO / "speechlm")], capture_output=True,
                           text=True).stdout
    assert found == ""
    # RNG files of older runs (numpy arrays in tuples) still load, and restore the state exactly
    from speechlm.train.checkpoint import load_rng

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    (tmp_path / "old" / "rng").mkdir(parents=True)
    torch.save(old, tmp_path / "old" / "rng" / "rank_0.pt")
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_rng(tmp_path / "old", 0)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


# ---- case 11: a damaged newest checkpoint is named, set aside, and the previous one resumed ---
def test_case11_truncated_checkpoint_is_set_aside(dumps, tmp_path, caplog):
    out = tmp_path / "run"
    _trainer(dumps, out).train()
    root = out / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004"]
    weights = root / "step_00000004" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated on disk
    with caplog.at_level(logging.WARNING):
        tr = _trainer(dumps, out, max_steps=6)
    assert tr.step == 2  # resumed from the newest intact checkpoint
    assert not (root / "step_00000004").exists() and (root / "step_00000004.corrupt").is_dir()
    assert any(str(weights) in r.getMessage() and "set aside" in r.getMessage() for r in caplog.records)
    tr.train()
    assert latest_checkpoint(root).name == "step_00000006"
    # a checkpoint from before manifests existed gets structural checks: a cut optimizer.pt is found
    from speechlm.train.checkpoint import resume_checkpoint

    last = latest_checkpoint(root)
    (last / "COMPLETE").write_text(json.dumps({"step": 6}))
    opt = (last / "optimizer.pt").read_bytes()
    (last / "optimizer.pt").write_bytes(opt[:100])
    assert resume_checkpoint(root).name == "step_00000004"
    assert (root / "step_00000006.corrupt").is_dir()


# ---- case 12: disk full while saving ------------------------------------------------------------
def test_case12_disk_full_while_saving_keeps_earlier_checkpoints(dumps, tmp_path, monkeypatch):
    import safetensors.torch

    real_save, calls = safetensors.torch.save_file, []

    def save_until_full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 1000)  # the part that fitted
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_until_full)  # fault injection: the 2nd save fails
    out = tmp_path / "run"
    tr = _trainer(dumps, out)
    with pytest.raises(Exception) as err:
        tr.train()
    root = out / "checkpoints"
    msg = str(err.value)
    assert not (root / ".step_00000004.tmp").exists() and not (root / "step_00000004").exists()
    assert "step_00000004" in msg and "disk is full" in msg and "MB" in msg and str(calls[1]) in msg
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002"]
    from speechlm.train.checkpoint import CheckpointSaveError
    from speechlm.train.integrity import verify_checkpoint

    assert isinstance(err.value, CheckpointSaveError)
    assert verify_checkpoint(root / "step_00000002") == []
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert _trainer(dumps, out).step == 2  # the same command resumes
    # torch.save reports a full disk as a RuntimeError from its zip writer: handled the same way
    from speechlm.train.checkpoint import save_checkpoint
    from speechlm.train.distributed import DistEnv

    def zip_writer_fails(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    with pytest.raises(CheckpointSaveError, match="disk is full") as err:
        save_checkpoint(root, 8, DistEnv(), lambda d: None, {"opt": 1}, {"step": 8}, size_hint=10**6)
    assert "step_00000008" in str(err.value) and not (root / ".step_00000008.tmp").exists()
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002"]


# ---- case 14: resuming with changed options ------------------------------------------------------
def test_case14_resume_with_changed_options_keeps_config(dumps, tmp_path, caplog):
    out = tmp_path / "run"
    assert _cli(dumps, out, "--max-steps", "2") == 0
    original = (out / "config.yaml").read_text()
    with caplog.at_level(logging.WARNING):
        assert _cli(dumps, out, "--max-steps", "4", "--lr", "0.01") == 1
    assert any("train_config.lr" in r.getMessage() and "--allow-config-change" in r.getMessage() for r in caplog.records)
    assert (out / "config.yaml").read_text() == original
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"  # nothing trained
    assert _cli(dumps, out, "--max-steps", "4", "--lr", "0.01", "--allow-config-change") == 0
    assert (out / "config.yaml").read_text() == original  # the original options stay
    changes = [json.loads(x) for x in (out / "config_changes.jsonl").read_text().splitlines()]
    assert changes[-1]["changes"]["train_config.lr"] == [0.003, 0.01] and changes[-1]["step"] == 2
    assert "train_config.max_steps" in changes[-1]["changes"]
    assert _cli(dumps, out, "--max-steps", "6") == 0  # the budget alone may change
    assert latest_checkpoint(out / "checkpoints").name == "step_00000006"
    assert json.loads((out / "config_changes.jsonl").read_text().splitlines()[-1])["allowed_by"] == "budget"


# ---- case 4: --init-from with the same vocabulary size in another order --------------------------
def test_case4_init_from_reordered_vocabulary_remaps_rows(dumps, tmp_path):
    old_vocab = synthetic_vocab(["asr"])
    torch.manual_seed(0)
    src = SpeechLM(load_config(ModelConfig, TINY), old_vocab)
    src.save_pretrained(tmp_path / "src")
    # the same tokenizers added in the opposite order: same size, most ids moved
    new_vocab = synthetic_vocab(["asr"], dict(reversed(list(TOKENIZERS.items()))))
    assert len(new_vocab) == len(old_vocab) and new_vocab.tokens != old_vocab.tokens
    tr = _trainer(dumps, tmp_path / "ft", vocab=new_vocab, init_from=str(tmp_path / "src"))
    saved = load_file(str(tmp_path / "src" / "model.safetensors"))["embed.emb.weight"]
    got = tr.model.embed.weight.detach()
    for token in ("<task:asr>", "<seg:codec>", "codec/s2/5", "text_bpe/s0/7", "phone/s0/39"):
        torch.testing.assert_close(got[new_vocab.id(token)], saved[old_vocab.id(token)], rtol=0, atol=0)
    torch.testing.assert_close(tr.model.head.weight.detach(), got)  # tied head follows
    tr.train()  # and it trains


# ---- case 22: a weights file that is not safetensors ---------------------------------------------
def test_case22_corrupt_weights_file_error_names_path(dumps, tmp_path):
    from speechlm.cli import main

    model = SpeechLM(load_config(ModelConfig, TINY), synthetic_vocab(["asr"]))
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    torch.save(model.state_dict(), weights)  # a PyTorch pickle under the safetensors name
    with pytest.raises(ValueError) as err:
        SpeechLM.from_pretrained(tmp_path / "m")
    assert str(weights) in str(err.value) and "torch.save" in str(err.value)
    weights.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")  # a broken header
    with pytest.raises(ValueError, match="damaged or truncated") as err:
        SpeechLM.from_pretrained(tmp_path / "m")
    assert str(weights) in str(err.value)
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(dumps / "token_list.json"),
                 "--out-dir", str(tmp_path / "ft"), "--init-from", str(tmp_path / "m"), "--max-steps", "1"]) == 1
    with pytest.raises(ValueError) as err:
        _trainer(dumps, tmp_path / "ft2", init_from=str(tmp_path / "m"))
    assert str(weights) in str(err.value)


# ---- case 17: lr: 1e-3 -------------------------------------------------------------------------
def test_case17_yaml_exponent_without_dot_is_a_float(tmp_path):
    from speechlm.config import load_yaml

    f = tmp_path / "train.yaml"
    f.write_text("lr: 1e-3\neps: 1E-8\nmin_lr_ratio: 5e-1\nmax_steps: 10\nwarmup_steps: 2\n")
    cfg = load_train_config(f)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.eps == 1e-8 and cfg.min_lr_ratio == 0.5
    assert load_yaml(f)["lr"] == 0.001
    from speechlm.config import yaml_loads  # what `--set lr=1e-3` goes through

    assert yaml_loads("a: 1e3\nb: 12\nc: v1e3\nd: '1e-3'") == {"a": 1000.0, "b": 12, "c": "v1e3", "d": "1e-3"}


# ---- case 2 (training half): tokenizer files fingerprinted where the run started ----------------
def test_case2_tokenizer_files_fingerprinted_at_training_time(dumps, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe"
    (recipe / "dump" / "char").mkdir(parents=True)
    chars = recipe / "dump" / "char" / "chars.txt"
    chars.write_text("<unk>\n<space>\na\nb\nc\n")
    (recipe / "tokenizers.yaml").write_text("text_bpe:\n  type: char\n  vocab: dump/char/chars.txt\n")
    monkeypatch.chdir(recipe)  # recipes run from their own dir, with relative paths
    out = recipe / "exp" / "run"
    assert _cli(dumps, out, "--max-steps", "1", "--tokenizers", "tokenizers.yaml") == 0
    assert (out / "tokenizer_files.json").is_file()
    from speechlm.train.rundir import check_tokenizer_files, tokenizer_fingerprints

    fp = tokenizer_fingerprints(out)
    assert fp["base_dir"] == str(recipe.resolve())
    entry = fp["tokenizers"]["text_bpe"]["vocab"]
    assert entry["path"] == "dump/char/chars.txt" and entry["kind"] == "file"
    assert entry["sha256"] == hashlib.sha256(chars.read_bytes()).hexdigest() and entry["size"] == chars.stat().st_size
    monkeypatch.chdir(tmp_path)  # checked from elsewhere: paths still resolve where the run started
    assert check_tokenizer_files(out) == []
    chars.write_text("<unk>\n<space>\nc\nb\na\n")  # same size, other symbols
    problems = check_tokenizer_files(out)
    assert len(problems) == 1 and str(chars) in problems[0] and "sha256" in problems[0]
    assert os.path.isabs(json.loads((out / "env.json").read_text())["cwd"])


# ---- --init-from a run dir: the run's final model (the recipe's init_from takes an exp dir) --------
def test_init_from_a_run_dir_uses_its_final_model(dumps, tmp_path):
    import yaml

    assert _cli(dumps, tmp_path / "a", "--max-steps", "2") == 0
    assert _cli(dumps, tmp_path / "b", "--max-steps", "2", "--init-from", str(tmp_path / "a")) == 0
    run = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert Path(run["init_from"]) == tmp_path / "a" / "checkpoints" / "step_00000002"


def test_ctc_tasks_must_be_tasks_of_the_training_data(dumps, tmp_path, caplog):
    from speechlm.cli import main

    conf = tmp_path / "model.yaml"
    conf.write_text(Path(TINY).read_text() + "\nctc_weight: 0.3\nctc_tokenizer: text_bpe\nctc_tasks: [spoken_command]\n")
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(dumps / "token_list.json"),
                 "--model-config", str(conf), "--train-config", TRAIN, "--out-dir", str(tmp_path / "exp"),
                 "--set", "max_steps=1", "--set", "progress_bar=false"]) != 0
    assert "ctc_tasks: spoken_command not among the training data's tasks (asr)" in caplog.text
