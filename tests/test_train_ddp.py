"""Two gloo processes on CPU train the same parameters as one process with the same global
batch (grad_accum 2), and see the same examples at each step: DDP, and FSDP2 (slow)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speechlm.conf import resolve_config
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.train.checkpoint import latest_checkpoint, read_state


def _ids(out, ranks):
    per_step = defaultdict(set)
    for r in range(ranks):
        for ln in (out / f"example_ids.rank{r}.txt").read_text().splitlines():
            step, _, ids = ln.split("\t")
            per_step[int(step)].update(ids.split())
    return dict(per_step)


def _compare(tmp_path, distributed: str, data: list[str]) -> None:
    make_dump(tmp_path / "asr", "asr", 30, seed=0, frames=(10, 50))
    make_dump(tmp_path / "tts", "tts", 20, seed=1, prefix="t", frames=(10, 50), n_speakers=2)
    synthetic_vocab(["asr", "tts"]).save(tmp_path / "token_list.json")
    cfg = yaml.safe_load(open(resolve_config("train", "tiny")))
    cfg.update(max_steps=3, batch_tokens=500, pool_size=40, valid_every=3, save_every=3, progress_bar=False,
               log_example_ids=True, tensorboard=False, plot=False)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    common = ["train", *(a for d in data for a in ("--data", d.format(root=tmp_path))),
              *(a for d in data for a in ("--valid-data", d.format(root=tmp_path).rsplit(":", 1)[0])),
              "--vocab", str(tmp_path / "token_list.json"), "--model-config", "tiny",
              "--train-config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "speechlm", *common, "--out-dir", str(tmp_path / "two"), "--distributed", distributed],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr
    from speechlm.cli import main

    assert main([*common, "--out-dir", str(tmp_path / "one"), "--grad-accum", "2"]) == 0
    a = load_file(str(latest_checkpoint(tmp_path / "two" / "checkpoints") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "one" / "checkpoints") / "model.safetensors"))
    va, vb = (read_state(latest_checkpoint(tmp_path / d / "checkpoints"))["valid"] for d in ("two", "one"))
    assert va.keys() == vb.keys() and "loss@asr" in va
    for k in va:  # validation sums over ranks exactly
        assert abs(va[k] - vb[k]) < 1e-5 * max(1.0, abs(vb[k])), k
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert _ids(tmp_path / "two", 2) == _ids(tmp_path / "one", 1)
    assert sorted(_ids(tmp_path / "one", 1)) == [1, 2, 3]


def test_ddp_two_processes_match_single(tmp_path):
    _compare(tmp_path, "ddp", ["asr:a:{root}/asr:2", "tts:b:{root}/tts:1"])


@pytest.mark.slow
def test_fsdp_two_processes_match_single(tmp_path):
    # one task: FSDP2 gives a parameter that no batch of a step used a zero gradient (AdamW still
    # moves it by momentum and decay) where DDP leaves it untouched; here such parameters are
    # never used and stay at their zero init either way
    _compare(tmp_path, "fsdp", ["asr:a:{root}/asr:1"])
