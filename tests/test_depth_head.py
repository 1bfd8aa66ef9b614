"""The multiscale depth head's incremental decoding steps (fused weights, local cache) compute what
its teacher-forced pass (the training forward) computes, and follow weight updates."""
from __future__ import annotations

import pytest
import torch

from speechlm.models.heads import DepthHead


def random_head(S: int = 4, dim: int = 32, local_dim: int = 16, layers: int = 2, heads: int = 4) -> DepthHead:
    torch.manual_seed(0)
    head = DepthHead(dim, S, local_dim, layers, heads)
    with torch.no_grad():
        for p in head.parameters():  # norm gains and the level embedding away from their init too
            p.normal_(0.0, 0.3)
    return head.eval()


def teacher_forced(head: DepthHead, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``[N, S, D]``: the training pass over the whole local sequence."""
    return head(h, prev[:, :-1])


def stepped(head: DepthHead, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    cache = head.new_cache()
    return torch.stack([head.step(h if k == 0 else prev[:, k - 1], k, cache) for k in range(prev.shape[1])], 1)


@pytest.mark.parametrize("rows", [1, 3])
def test_steps_equal_the_teacher_forced_pass(rows):
    head = random_head()
    h, prev = torch.randn(rows, 32), torch.randn(rows, 4, 32)
    with torch.no_grad():
        ref, out = teacher_forced(head, h, prev), stepped(head, h, prev)
    assert out.shape == ref.shape == (rows, 4, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_steps_follow_weight_updates():
    head = random_head()
    h, prev = torch.randn(2, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        stepped(head, h, prev)  # builds the fused weights
        first = head.decode_weights()
        head.local.layers[1].mlp.down_proj.weight.mul_(2.0)  # e.g. an optimizer step
        head.level.add_(0.5)
        ref, out = teacher_forced(head, h, prev), stepped(head, h, prev)
    assert head.decode_weights() is not first
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert head.decode_weights() is head.decode_weights()  # unchanged weights: built once


def test_steps_under_bf16_autocast_stay_close():
    head = random_head()
    h, prev = torch.randn(2, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        ref = teacher_forced(head, h, prev)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stepped(head, h, prev)
    assert torch.isfinite(out).all()
    assert float((out.float() - ref).norm() / ref.norm()) < 0.05
