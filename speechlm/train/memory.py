"""The training process's resident memory (RSS), for the training log and ``bench/memory.py``.

Measured on the mini recipe's training (4.8M parameters, batches of 3000 tokens, 1 thread, torch
2.11's default CUDA wheel on a CPU machine; peak 1192 MB over 60 steps): ``import torch`` alone is
~485 MB (the CUDA libraries), ``torch.optim``'s first step imports ``torch._dynamo`` (sympy,
inductor, triton: ~115 MB), the step's tensors ~250 MB at its peak (~234 MB saved for backward:
MLP 106, RMSNorm 37, attention 30, cross-entropy 21; the guided-attention head ~6), and glibc's
heap keeps ~150 MB more (freed blocks of earlier batch shapes). An AdamW that skips the dynamo
import (torch's update functions under its private wrappers) took the peak only to 1161 MB and
is not used: it depends on torch internals. A fixed ``M_MMAP_THRESHOLD`` (128 KB) gives -150 MB
at the peak but faults every step's activations in again (+50% CPU time per step here).
DataLoader workers share the parent's pages: sum the tree's PSS, not its RSS.
"""
from __future__ import annotations


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (``VmHWM``, MB); None where /proc has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
