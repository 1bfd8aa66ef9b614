"""The training process's resident memory (RSS): what it costs beyond the tensors it holds.

Measured on the mini recipe's training (4.8M parameters, batches of 3000 tokens, 1 thread, torch
2.11's default CUDA wheel on a CPU machine; ``bench/memory.py``): ``import torch`` alone is ~485 MB
(the CUDA libraries' relocated data), the step's tensors ~250 MB at its peak, glibc's heap keeps
~150 MB more (freed blocks of earlier batch shapes), and:

* **torch.compile's import.** ``torch.optim.Optimizer`` imports ``torch._dynamo`` (with sympy,
  torch._inductor and triton: ~115 MB) on its first ``add_param_group`` and every ``step``, only
  to mark them not to be compiled. :class:`AdamW` is torch's AdamW with those markers removed: the
  same update functions, bit for bit, without the import. Nothing else in training imports it.
  Measured: RSS after setup 642 -> 530 MB; the 60-step peak only 1192 -> 1161 MB (the heap's
  slack of the step takes most of what the import left free); same losses and weights.

glibc's heap could be made to return freed blocks (fixed ``M_MMAP_THRESHOLD``, e.g. 128 KB: -150
MB at the peak), but every step then faults its ~900 MB of activations in again (~7 us per 4 KB
page on the CI VM: +50% CPU time per step), so it is left as it is.

Example:
    >>> opt = AdamW(model.parameters(), lr=1e-3, fused=True)   # doctest: +SKIP
"""
from __future__ import annotations

import logging

import torch
import torch.optim.adam as _torch_adam
from torch.optim.optimizer import Optimizer

log = logging.getLogger(__name__)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (``VmHWM``, MB); None where /proc has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def _undecorated(fn):
    return getattr(fn, "__wrapped__", None)


# torch's own functions under the ``torch._disable_dynamo`` wrappers (None if a torch version
# has no such wrappers: then :class:`AdamW` is plain torch AdamW)
_ADAM = _undecorated(getattr(_torch_adam, "adam", None))
_BASE = {name: _undecorated(getattr(Optimizer, name, None))
         for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")}
LEAN = _ADAM is not None and all(_BASE.values())


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` without importing ``torch._dynamo`` (see the module doc): the same
    parameter groups, state, state dicts and update (torch's own ``adam`` function: fused,
    foreach or per tensor as asked). Not for ``torch.compile``-d optimizer steps (use torch's)."""

    if LEAN:
        def add_param_group(self, param_group: dict) -> None:
            _BASE["add_param_group"](self, param_group)

        def zero_grad(self, set_to_none: bool = True) -> None:
            _BASE["zero_grad"](self, set_to_none)

        def state_dict(self) -> dict:
            return _BASE["state_dict"](self)

        def load_state_dict(self, state_dict: dict) -> None:
            _BASE["load_state_dict"](self, state_dict)

        def step(self, closure=None):
            """One update, as ``torch.optim.Adam.step`` (gradients off, unless differentiable)."""
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            with torch.set_grad_enabled(self.defaults["differentiable"]):
                self._accelerator_graph_capture_health_check()
                for group in self.param_groups:
                    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
                    has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                                   steps)
                    beta1, beta2 = group["betas"]
                    _ADAM(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad=group["amsgrad"],
                          has_complex=has_complex, beta1=beta1, beta2=beta2, lr=group["lr"],
                          weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                          foreach=group["foreach"], capturable=group["capturable"],
                          differentiable=group["differentiable"], fused=group["fused"],
                          grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None),
                          decoupled_weight_decay=group["decoupled_weight_decay"])
            return loss


__all__ = ["AdamW", "peak_rss_mb"]
