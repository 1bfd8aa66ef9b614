"""Exact loss normalization, schedules, stats reduction, checkpoint files."""
from __future__ import annotations

import math

import pytest
import torch

from speechlm.data.batch import collate
from speechlm.data.dataset import DataSpec, MultiTaskData
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.models import ModelConfig, SpeechLM
from speechlm.train import checkpoint as ck
from speechlm.train.distributed import DistEnv
from speechlm.train.numerics import StepStats, exact_mean_loss, lr_factor, micro_loss_scale, rescale_gradients


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("num")
    make_dump(root / "asr", "asr", 12, seed=0)
    vocab = synthetic_vocab(["asr"])
    data = MultiTaskData([DataSpec.parse(f"asr:a:{root / 'asr'}")], vocab, 4)
    torch.manual_seed(0)
    model = SpeechLM(ModelConfig(strategy="delay", dim=32, n_layers=1, n_heads=2), vocab)
    return model, [data.example(0, i) for i in range(12)]


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def test_accumulation_equals_full_batch(setup):
    """Micro-batches of different sizes, each scaled by world/total, give the gradient of the
    whole batch's loss_sum / weight_sum (the mean of per-batch means would not)."""
    model, exs = setup
    model.zero_grad()
    full = model(collate(exs))
    full.loss.backward()
    ref = _grads(model)
    parts = [exs[:2], exs[2:9], exs[9:]]
    model.zero_grad()
    outs = [model(collate(p)) for p in parts]
    total = sum(float(o.weight_sum) for o in outs)
    model.zero_grad()
    for p in parts:
        out = model(collate(p))
        (out.loss * out.weight_sum * micro_loss_scale(total, 1)).backward()
    for a, b in zip(ref, _grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert exact_mean_loss([float(o.loss_sum) for o in outs], [float(o.weight_sum) for o in outs]) == \
        pytest.approx(float(full.loss.detach()), rel=1e-5)
    naive = sum(float(o.loss.detach()) for o in outs) / 3
    assert abs(naive - float(full.loss.detach())) > 1e-6  # why the exact form matters


def test_rescale_corrects_estimate(setup):
    model, exs = setup
    model.zero_grad()
    out = model(collate(exs[:4]))
    out.loss.backward()
    ref = _grads(model)
    model.zero_grad()
    est = float(out.weight_sum) * 1.7  # a wrong estimate, fixed afterwards
    (model(collate(exs[:4])).loss * out.weight_sum * micro_loss_scale(est, 1)).backward()
    rescale_gradients(model.parameters(), est / float(out.weight_sum))
    for a, b in zip(ref, _grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no loss-carrying"):
        micro_loss_scale(0.0, 1)


def test_lr_schedule():
    assert lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert lr_factor(0.0, 9, 10) == pytest.approx(1.0)
    assert lr_factor(0.0, 10, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, 50, 10, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(1.0, 99, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(1.0, 99, 10, "linear", 0.0) == pytest.approx(0.0)
    assert lr_factor(0.3, 99, 0, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0.3, 99, 0, "exp")


def test_step_stats():
    s = StepStats()
    s.add("loss", 6.0, 3.0)
    s.add("loss", 2.0, 1.0)
    s.add("acc", 1.0, 4.0)
    out = s.reduce()
    assert out["loss"] == 2.0 and out["loss/count"] == 4.0 and out["acc"] == 0.25
    assert math.isnan(StepStats().reduce(["x/sum", "x/count"])["x"])


def test_checkpoint_atomic_latest_prune_average(tmp_path, setup):
    model, _ = setup
    env = DistEnv()
    root = tmp_path / "checkpoints"

    def write(d, value):
        from safetensors.torch import save_file
        save_file({"w": torch.full((2,), float(value))}, str(d / "model.safetensors"))

    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)):
        ck.save_checkpoint(root, step, env, lambda d, v=step: write(d, v), {"opt": step},
                           {"step": step, "valid": {"loss": loss}})
    (root / ".step_00000005.tmp").mkdir()  # a save killed half-way
    (root / "step_00000006").mkdir()  # no COMPLETE marker
    assert ck.latest_checkpoint(root).name == "step_00000004"
    assert [p.name for p in ck.best_checkpoints(root, 2)] == ["step_00000002", "step_00000003"]
    removed = ck.prune_checkpoints(root, keep_last=1, keep_best=2)
    assert [p.name for p in removed] == ["step_00000001"]
    avg = ck.average_checkpoints(ck.best_checkpoints(root, 2), root / "average")
    from safetensors.torch import load_file
    assert load_file(str(avg / "model.safetensors"))["w"].tolist() == [2.5, 2.5]
    assert ck.is_complete(avg)
    assert torch.load(root / "step_00000004" / "optimizer.pt") == {"opt": 4}
