"""The training process's memory: the optimizer does not import torch.compile's machinery
(~115 MB of RSS), and its updates are torch AdamW's, bit for bit."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from speechlm.train.build import make_optimizer
from speechlm.train.config import TrainConfig
from speechlm.train.memory import LEAN, AdamW, peak_rss_mb


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                               torch.nn.Linear(32, 50))


def _train(cls, steps: int = 6, **kw):
    model = _model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = cls([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=2e-3, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 50, (4, 7), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:
            group["lr"] *= 0.8
    return model, opt


@pytest.mark.parametrize("kw", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_adamw_is_torch_adamw_bit_for_bit(kw):
    assert LEAN, "this torch has no __wrapped__ optimizer methods: memory.AdamW fell back to torch's"
    ours, o1 = _train(AdamW, **kw)
    ref, o2 = _train(torch.optim.AdamW, **kw)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        for name, v in s1["state"][k].items():
            assert torch.equal(v, s2["state"][k][name]), (k, name)
    # a state dict of one loads into the other (checkpoints stay interchangeable)
    fresh = AdamW(_model().parameters(), lr=1.0)
    fresh.load_state_dict(torch.optim.AdamW(_model().parameters(), lr=0.5).state_dict())
    assert fresh.param_groups[0]["lr"] == 0.5


CHILD = r"""
import sys, torch
from speechlm.train.build import make_optimizer
from speechlm.train.config import TrainConfig
m = torch.nn.Linear(8, 8)
opt = make_optimizer(m, TrainConfig())
m(torch.randn(2, 8)).sum().backward()
opt.step(); opt.zero_grad(); opt.state_dict()
torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
print("dynamo" if "torch._dynamo" in sys.modules else "clean")
"""


def test_training_optimizer_does_not_import_torch_dynamo():
    """The main fix of the training peak: torch.optim's step imports torch._dynamo (+ sympy,
    inductor, triton: ~115 MB resident) unless the trainer's optimizer avoids it."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "clean"


def test_make_optimizer_uses_it_and_peak_rss_reads():
    opt = make_optimizer(_model(), TrainConfig())
    assert isinstance(opt, AdamW) and isinstance(opt, torch.optim.AdamW)
    peak = peak_rss_mb()
    assert peak is None or peak > 10
