"""The trainer end to end on CPU: exact resume, NaN stop, run dir, CLI, init from a model dir."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from speechlm.conf import resolve_config
from speechlm.config import load_config
from speechlm.data.dataset import DataSpec
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.models import ModelConfig, SpeechLM
from speechlm.train.checkpoint import latest_checkpoint, list_checkpoints
from speechlm.train.config import load_train_config
from speechlm.train.trainer import Trainer, TrainingDiverged

TINY = str(resolve_config("model", "tiny"))
TRAIN = str(resolve_config("train", "tiny"))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_dump(root / "asr", "asr", 40, seed=0, frames=(10, 60))
    make_dump(root / "tts", "tts", 30, seed=1, prefix="t", frames=(10, 60), n_speakers=3)
    vocab = synthetic_vocab(["asr", "tts"])
    vocab.save(root / "token_list.json")
    return root


def _specs(root):
    return [DataSpec.parse(f"asr:a:{root / 'asr'}:2"), DataSpec.parse(f"tts:b:{root / 'tts'}:1")]


def _trainer(root, out, stop=None, **over):
    opts = {"max_steps": 6, "save_every": 2, "valid_every": 4, "batch_tokens": 600, "pool_size": 60,
            "progress_bar": False, "log_every": 2, "log_example_ids": True, **over}
    cfg = load_train_config(TRAIN, opts)
    mc = load_config(ModelConfig, TINY)
    mc.dropout = 0.1  # the resumed run must restore the RNG too
    return Trainer(cfg, mc, synthetic_vocab(["asr", "tts"]), _specs(root), str(out),
                   [DataSpec.parse(f"asr:a:{root / 'asr'}")], stop_after_steps=stop).setup()


def _params(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def _ids(out):
    return [ln.split("\t") for ln in (out / "example_ids.rank0.txt").read_text().splitlines()]


def test_resume_gives_same_parameters_and_data_order(dumps, tmp_path):
    full = tmp_path / "full"
    _trainer(dumps, full).train()
    killed = tmp_path / "killed"
    _trainer(dumps, killed, stop=3).train()  # saved step 2, step 3 done but lost
    assert latest_checkpoint(killed / "checkpoints").name == "step_00000002"
    resumed = _trainer(dumps, killed)
    assert resumed.step == 2 and resumed.next_batch == 2
    resumed.train()
    a, b = _params(latest_checkpoint(full / "checkpoints")), _params(latest_checkpoint(killed / "checkpoints"))
    assert latest_checkpoint(killed / "checkpoints").name == "step_00000006"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert _ids(full) == _ids(killed)  # same examples, same steps, same global batches
    assert len(_ids(full)) == 6


def test_run_dir_layout_and_keep_n(dumps, tmp_path):
    out = tmp_path / "run"
    _trainer(dumps, out, keep_last=1, keep_best=1, average_best=2).train()
    for f in ("config.yaml", "cmd.sh", "env.json", "train_log.jsonl", "curves.png", "tasks/asr.yaml"):
        assert (out / f).is_file(), f
    assert list((out / "tensorboard").iterdir())
    env = json.loads((out / "env.json").read_text())
    assert env["speechlm"] and "torch" in env
    ckpts = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert "step_00000006" in ckpts and len(ckpts) <= 2
    last = latest_checkpoint(out / "checkpoints")
    for f in ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng/rank_0.pt", "COMPLETE", "config.json",
              "llama_config.json", "token_list.json"):
        assert (last / f).is_file(), f
    assert (out / "checkpoints" / "average" / "model.safetensors").is_file()
    from speechlm.train.checkpoint import final_model_dir

    assert final_model_dir(out).name == "average"
    SpeechLM.from_pretrained(final_model_dir(out))
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["sampler"]["next"] == 6 and state["valid"]["loss"] > 0
    assert "loss@asr" in state["valid"]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "valid"}
    SpeechLM.from_pretrained(last)  # a checkpoint is a model dir


def test_nan_stops_naming_examples(dumps, tmp_path):
    out = tmp_path / "nan"
    tr = _trainer(dumps, out, max_steps=4, save_every=2, valid_every=0)
    tr.stop_after_steps = 2
    tr.train()
    tr = _trainer(dumps, out, max_steps=4, save_every=2, valid_every=0)
    with torch.no_grad():
        tr.model.embed.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"asr:a/utt|tts:b/t") as err:
        tr.train()
    assert "step 3" in str(err.value)
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"  # the last good one
    assert all(torch.isfinite(v).all() for v in _params(latest_checkpoint(out / "checkpoints")).values())


def test_cli_and_init_from(dumps, tmp_path):
    from speechlm.cli import main

    out = tmp_path / "cli"
    args = ["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--valid-data", f"asr:a:{dumps / 'asr'}",
            "--vocab", str(dumps / "token_list.json"), "--model-config", "tiny", "--train-config",
            "tiny", "--out-dir", str(out), "--max-steps", "2", "--valid-every", "2",
            "--save-every", "2"]
    assert main(args) == 0
    cfg = (out / "config.yaml").read_text()
    assert "max_steps: 2" in cfg and "asr:a:" in cfg
    first = latest_checkpoint(out / "checkpoints")
    # fine-tune from it with a grown vocabulary: old rows are copied, new rows are fresh
    bigger = synthetic_vocab(["asr", "tts", "st"])
    bigger.save(tmp_path / "big.json")
    out2 = tmp_path / "ft"
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(tmp_path / "big.json"),
                 "--train-config", TRAIN, "--out-dir", str(out2), "--init-from", str(first),
                 "--max-steps", "1", "--lr", "0"]) == 0
    old, new = _params(first)["embed.emb.weight" if "embed.emb.weight" in _params(first) else "embed.weight"], None
    new_sd = _params(latest_checkpoint(out2 / "checkpoints"))
    new = new_sd["embed.emb.weight" if "embed.emb.weight" in new_sd else "embed.weight"]
    assert new.shape[0] == len(bigger) > old.shape[0]
    torch.testing.assert_close(new[: old.shape[0]], old)
    assert main(["train", "--data", "asr:a:/nonexistent", "--vocab", str(dumps / "token_list.json"),
                 "--model-config", TINY, "--out-dir", str(tmp_path / "x")]) == 1


def test_init_from_hf_causal_lm(dumps, tmp_path):
    """--init-from an HF causal LM dir trains over that LLM (activation checkpointing on)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from speechlm.cli import main

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
                                       max_position_embeddings=512))
    llm.save_pretrained(tmp_path / "llm")
    (tmp_path / "train.yaml").write_text((open(TRAIN).read()
                                          + "activation_checkpointing: true\nprogress_bar: false\n"))
    out = tmp_path / "hf"
    assert main(["train", "--data", f"asr:a:{dumps / 'asr'}:1", "--vocab", str(dumps / "token_list.json"),
                 "--model-config", TINY, "--train-config", str(tmp_path / "train.yaml"), "--out-dir", str(out),
                 "--init-from", str(tmp_path / "llm"), "--max-steps", "2", "--valid-every", "0"]) == 0
    last = latest_checkpoint(out / "checkpoints")
    body = _params(last)
    src = llm.state_dict()["model.layers.0.mlp.up_proj.weight"]
    key = next(k for k in body if k.endswith("layers.0.mlp.up_proj.weight"))
    assert body[key].shape == src.shape and (body[key] - src).abs().max() < 0.05  # started from the LLM
    assert (last / "hf_backbone" / "config.json").is_file()
    assert SpeechLM.from_pretrained(last).config.backbone == "hf"


def test_sigterm_saves_and_stops(dumps, tmp_path):
    import os
    import signal
    import threading

    out = tmp_path / "sig"
    tr = _trainer(dumps, out, max_steps=5000, save_every=0, valid_every=0, log_example_ids=False)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    tr.train()
    assert 0 < tr.step < 5000
    assert latest_checkpoint(out / "checkpoints").name == f"step_{tr.step:08d}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    again = _trainer(dumps, out, max_steps=tr.step + 1, save_every=0, valid_every=0, log_example_ids=False)
    assert again.step == tr.step and again.next_batch == tr.next_batch


def test_token_budget_and_bf16(dumps, tmp_path):
    tr = _trainer(dumps, tmp_path / "tok", max_steps=None, max_train_tokens=2000, valid_every=0, save_every=0,
                  precision="bf16", log_example_ids=False)
    assert tr.amp == torch.bfloat16
    tr.train()
    assert tr.tokens >= 2000 and tr.step >= 1
    per_step = tr.tokens / tr.step
    assert tr.tokens - per_step * 1.5 < 2000  # stopped at the first step past the budget
    assert latest_checkpoint(tmp_path / "tok" / "checkpoints").name == f"step_{tr.step:08d}"


def test_automatic_threads_take_up_cores_handed_over_mid_run(dumps, tmp_path, caplog):
    """threads: 0 follows the cores the process may use while it trains (the voice-agent recipe
    hands the cores of a finished training to the one that goes on, with taskset -p)."""
    import os
    import signal
    import threading
    import time

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    before, main = torch.get_num_threads(), threading.get_native_id()

    def hand_over():
        os.sched_setaffinity(main, set(cores))
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        os.sched_setaffinity(0, {cores[0]})
        tr = _trainer(dumps, tmp_path / "t", threads=0, max_steps=5000, save_every=0, valid_every=0,
                      log_example_ids=False)
        assert torch.get_num_threads() == 1
        threading.Timer(1.0, hand_over).start()
        with caplog.at_level("INFO", logger="speechlm.train.trainer"):
            tr.train()
        assert torch.get_num_threads() == len(cores)
        assert f"the cores this process may use changed: 1 -> {len(cores)} torch threads" in caplog.text
    finally:
        os.sched_setaffinity(0, set(cores))
        torch.set_num_threads(before)
