"""Two gloo DDP processes on CPU train the same parameters as one process with the same global
batch (grad_accum 2), and see the same examples at each step."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict

import torch
import yaml
from safetensors.torch import load_file

from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.train.checkpoint import latest_checkpoint


def _ids(out, ranks):
    per_step = defaultdict(set)
    for r in range(ranks):
        for ln in (out / f"example_ids.rank{r}.txt").read_text().splitlines():
            step, _, ids = ln.split("\t")
            per_step[int(step)].update(ids.split())
    return dict(per_step)


def test_ddp_two_processes_match_single(tmp_path):
    make_dump(tmp_path / "asr", "asr", 30, seed=0, frames=(10, 50))
    make_dump(tmp_path / "tts", "tts", 20, seed=1, prefix="t", frames=(10, 50), n_speakers=2)
    synthetic_vocab(["asr", "tts"]).save(tmp_path / "token_list.json")
    cfg = yaml.safe_load(open("conf/train/tiny.yaml"))
    cfg.update(max_steps=3, batch_tokens=500, pool_size=40, valid_every=0, save_every=3, progress=False,
               log_example_ids=True, tensorboard=False, plot=False)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    common = ["train", "--data", f"asr:a:{tmp_path / 'asr'}:2", "--data", f"tts:b:{tmp_path / 'tts'}:1",
              "--vocab", str(tmp_path / "token_list.json"), "--model-config", "conf/model/tiny.yaml",
              "--train-config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "speechlm", *common, "--out-dir", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    from speechlm.cli import main

    assert main([*common, "--out-dir", str(tmp_path / "one"), "--grad-accum", "2"]) == 0
    a = load_file(str(latest_checkpoint(tmp_path / "ddp" / "checkpoints") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "one" / "checkpoints") / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert _ids(tmp_path / "ddp", 2) == _ids(tmp_path / "one", 1)
    assert sorted(_ids(tmp_path / "one", 1)) == [1, 2, 3]
    assert "2 process" in ddp.stderr or "gloo" in ddp.stderr
