"""The numerics of a training step, in one place: exact loss normalization, stats, schedules.

Exact normalization: a step sees ``A`` micro-batches on each of ``W`` ranks. The loss of the
step is ``sum(loss_sum) / sum(weight_sum)`` over all ``A*W`` micro-batches, so every loss slot
counts the same whatever the split. Each micro-batch backpropagates
``loss_sum * W / total_weight`` (``W`` undoes the rank average of DDP/FSDP), where
``total_weight`` is the step's summed loss weight, known before the forward pass from the
batches; if the model's own ``weight_sum`` differs, :func:`rescale_gradients` corrects the
gradients afterwards. One process with ``A=2`` and two with ``A=1`` give the same update.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity without a process group). Returns a new float64 CPU tensor."""
    device = torch.device("cuda", torch.cuda.current_device()) if (
        dist.is_initialized() and dist.get_backend() == "nccl") else torch.device("cpu")
    t = values.detach().to(device=device, dtype=torch.float64).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.cpu()


def micro_loss_scale(total_weight: float, world_size: int) -> float:
    """Factor on a micro-batch's ``loss_sum`` so the step gradient is d(sum loss_sum / total)."""
    if total_weight <= 0:
        raise ValueError("the step has no loss-carrying position (all loss weights are 0)")
    return world_size / total_weight


@torch.no_grad()
def rescale_gradients(params, factor: float) -> None:
    """Multiply every gradient by ``factor`` (skipped when it is 1)."""
    if factor == 1.0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


class StepStats:
    """Sums of ``loss_sum``, ``weight_sum`` and per-task / per-stat ``(sum, count)`` for one step
    (or a validation pass); :meth:`reduce` sums them over ranks exactly, in one all-reduce."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)

    def add(self, name: str, value: float | torch.Tensor, count: float | torch.Tensor) -> None:
        """Accumulate (tensors stay on their device until :meth:`reduce`: no sync per batch)."""
        for key, v in ((f"{name}/sum", value), (f"{name}/count", count)):
            self.sums[key] = self.sums[key] + (v.detach().double() if torch.is_tensor(v) else float(v))

    def add_output(self, out, tasks: list[str] | None = None, prefix: str = "") -> None:
        """Add a ``ModelOutput``: its loss and stats (as ``name`` and, for one-task batches,
        ``name@task``)."""
        items = [("loss", out.loss_sum, out.weight_sum), *((k, s, c) for k, (s, c) in out.stats.items())]
        task = tasks[0] if tasks and all(t == tasks[0] for t in tasks) else None
        for name, s, c in items:
            self.add(prefix + name, s, c)
            if task is not None:
                self.add(f"{prefix}{name}@{task}", s, c)

    def reduce(self, names: list[str] | None = None) -> dict[str, float]:
        """Means ``sum / count`` over all ranks; ``names`` fixes the key order on every rank."""
        keys = sorted(self.sums) if names is None else names
        t = all_reduce_sum(torch.tensor([float(self.sums.get(k, 0.0)) for k in keys], dtype=torch.float64))
        sums = dict(zip(keys, t.tolist()))
        out = {}
        for k in keys:
            if k.endswith("/sum"):
                name = k[:-4]
                c = sums.get(f"{name}/count", 0.0)
                out[name] = sums[k] / c if c else float("nan")
                out[f"{name}/count"] = c
        return out


def exact_mean_loss(loss_sums: list[float], weight_sums: list[float]) -> float:
    """The loss of a set of micro-batches: summed numerators over summed weights."""
    total = sum(weight_sums)
    return sum(loss_sums) / total if total else float("nan")


def lr_factor(budget_used: float, step: int, warmup_steps: int, schedule: str = "cosine",
              min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup over ``warmup_steps``, then ``schedule`` over
    ``budget_used`` in [0, 1] (fraction of the step or token budget used)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    done = min(max(budget_used, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * done
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, linear, constant")


__all__ = ["all_reduce_sum", "micro_loss_scale", "rescale_gradients", "StepStats", "exact_mean_loss",
           "lr_factor"]
