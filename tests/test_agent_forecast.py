"""Forecasts of task success: rank correlation and token statistics with known answers, and
`speechlm agent forecast` over the checkpoints of a real (tiny, seconds-long) training run."""
from __future__ import annotations

import json
import os
import math
import shutil

import pytest
import torch

import speechlm
from speechlm.agent.forecast import TokenStats, rankdata, spearman, token_stats
from test_agent_loop import TASKS, make_model_dir, reference_examples, write_request_episodes
from test_model_helpers import train


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    assert list(rankdata([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]  # ties share their mean rank
    # d = rank differences (0, 0, -1, 1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 2, 3], [5, 5, 5]) is None
    assert spearman([1, 2, 3, None], [1, 2, 3, 4]) == pytest.approx(1.0)  # a checkpoint without success is left out


def test_token_stats_known_answers():
    acc = TokenStats()
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 0.0, -1.0]])
    acc.add(logits, torch.tensor([2, 1]))  # uniform row (ties: rank 1) and a row where the reference is second
    s = acc.summary()
    p = logits[1].softmax(-1)
    assert s["tokens"] == 2
    assert s["entropy"] == pytest.approx((math.log(4) + float(-(p * p.log()).sum())) / 2, rel=1e-5)
    assert s["nll"] == pytest.approx((math.log(4) - math.log(float(p[1]))) / 2, rel=1e-5)
    assert s["top1"] == 50.0 and s["top5"] == 100.0 and s["rank"] == 1.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training run dir (tokenizers.yaml, tasks/, checkpoints/step_N written by save_checkpoint) of
    the tiny agent model at 4 points of a short training, and its episodes."""
    from speechlm.agent.episodes import read_episodes
    from speechlm.data.batch import collate
    from speechlm.train.checkpoint import save_checkpoint
    from speechlm.train.distributed import DistEnv

    root = tmp_path_factory.mktemp("forecast")
    episodes = write_request_episodes(root)
    eps = read_episodes(episodes)
    model_dir = make_model_dir(root / "init")
    exp = root / "exp"
    (exp / "tasks").mkdir(parents=True)
    for t in TASKS:
        shutil.copy(model_dir / "tasks" / f"{t}.yaml", exp / "tasks")
    chars = (model_dir / "tokenizers" / "text_bpe" / "chars.txt").resolve()
    (exp / "tokenizers.yaml").write_text(f"codec: {{type: codec2}}\ntext_bpe: {{type: char, vocab: {chars}}}\n")
    shutil.copy(model_dir / "decode.yaml", exp / "decode.yaml")
    pipe = speechlm.load(model_dir)
    batch = collate(reference_examples(pipe, eps, root), pipe.vocab.pad_id)
    done = 0
    for step in (0, 10, 30, 150):  # 150: enough for the spaced calls (`k = v`)
        if step > done:
            train(pipe.model, batch, steps=step - done, lr=5e-3, seed=step)
            done = step
        save_checkpoint(exp / "checkpoints", step, DistEnv(), pipe.model.save_pretrained, None, {"step": step})
    return exp, episodes


def test_forecast_over_checkpoints(run, tmp_path):
    from speechlm.cli import main

    exp, episodes = run
    out = tmp_path / "forecast"
    assert main(["agent", "forecast", "--exp-dir", str(exp), "--episodes", str(episodes), "--out-dir", str(out),
                 "--run-agent"]) == 0
    data = json.loads((out / "forecast.json").read_text())
    rows = data["checkpoints"]
    assert [r["step"] for r in rows] == [0, 10, 30, 150]
    first, last = rows[0], rows[-1]
    assert first["tokens"] == last["tokens"] > 50  # the same reference tokens for every checkpoint
    assert last["top1"] > first["top1"] + 50 and last["entropy"] < first["entropy"]
    assert last["nll"] < first["nll"] and last["rank"] < first["rank"]
    assert first["success"] == 0.0 and last["success"] == 100.0
    assert (out / "runs" / "step_00000150" / "predictions.jsonl").is_file()
    rho = data["spearman"]
    assert rho["top1"] is not None and rho["top1"] > 0 and rho["nll"] < 0
    assert "| step_00000150 | 150 |" in (out / "forecast.md").read_text()

    # two jobs, each over every second checkpoint: the same rows, in the checkpoints' order
    two = tmp_path / "two"
    assert main(["agent", "forecast", "--exp-dir", str(exp), "--episodes", str(episodes), "--out-dir", str(two),
                 "--run-agent", "--nj", "2"]) == 0
    rows_nj = json.loads((two / "forecast.json").read_text())["checkpoints"]
    assert [r["step"] for r in rows_nj] == [0, 10, 30, 150]
    assert [r["success"] for r in rows_nj] == [r["success"] for r in rows]
    assert [r["top1"] for r in rows_nj] == pytest.approx([r["top1"] for r in rows])
    assert (two / "jobs" / "2" / "forecast.json").is_file() and (two / "runs" / "step_00000010").is_dir()

    # without --run-agent the success column comes from the runs already scored
    again = tmp_path / "again"
    shutil.copytree(out / "runs", again / "runs")
    assert main(["agent", "forecast", "--exp-dir", str(exp), "--episodes", str(episodes), "--out-dir", str(again),
                 "--checkpoints", "step_00000000", "step_00000150"]) == 0
    rows2 = json.loads((again / "forecast.json").read_text())["checkpoints"]
    assert [r["success"] for r in rows2] == [0.0, 100.0]
    assert rows2[1]["top1"] == pytest.approx(last["top1"])

    # an agent run older than its checkpoint (one of a retrained run of that name) runs again
    stale = tmp_path / "stale"
    shutil.copytree(out / "runs" / "step_00000000", stale / "runs" / "step_00000150")
    for f in (stale / "runs" / "step_00000150").rglob("*"):
        os.utime(f, (0, 0))
    assert main(["agent", "forecast", "--exp-dir", str(exp), "--episodes", str(episodes), "--out-dir", str(stale),
                 "--checkpoints", "step_00000150", "--run-agent"]) == 0
    assert json.loads((stale / "forecast.json").read_text())["checkpoints"][0]["success"] == 100.0


def test_token_stats_from_a_tokenized_dump_equal_those_from_episodes(run, tmp_path):
    """The recipe's held-out dump (prepare + tokenize of the data dir) gives the same statistics as
    the episodes' reference steps tokenized on the fly."""
    from speechlm.agent.datadir import write_dialogue_dir
    from speechlm.agent.episodes import read_episodes
    from speechlm.agent.forecast import examples_from_dump, pipeline_for
    from speechlm.cli import main

    exp, episodes = run
    eps = read_episodes(episodes)
    for ep in eps:
        ep.turns[0]["audio"] = str(episodes.parent / ep.turns[0]["audio"])
    data = tmp_path / "data"
    write_dialogue_dir(eps, data)
    dump = tmp_path / "dump"
    assert main(["prepare", "--task", str(exp / "tasks" / "spoken_dialogue.yaml"), "--data-dir", str(data),
                 "--out-dir", str(dump)]) == 0
    assert main(["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(exp / "tokenizers.yaml")]) == 0
    pipe = pipeline_for(exp / "checkpoints" / "step_00000150", exp)
    from_dump = token_stats(pipe.model, examples_from_dump(f"spoken_dialogue:test:{dump}", pipe.vocab,
                                                           pipe.model.n_streams))
    from_eps = token_stats(pipe.model, reference_examples(pipe, eps, episodes.parent))
    assert from_dump == pytest.approx(from_eps)
