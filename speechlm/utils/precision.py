"""Numeric precision: one vocabulary for training (the train config's ``precision``) and decoding
(the decode config's ``precision``).

``fp32`` runs as is; ``bf16`` / ``fp16`` run the forward pass under ``torch.autocast`` with that
dtype; ``auto`` picks bf16 on a GPU that has it (else fp16) and on a CPU with native bf16
(avx512_bf16 / AMX), else fp32. ``SPEECHLM_CPU_BF16=0`` (or ``1``) overrides that detection for
``auto``: a whole recipe then runs as on a CPU without (or with) native bf16.
"""
from __future__ import annotations

import contextlib
import os
import platform

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matmul (avx512_bf16 or AMX); env ``SPEECHLM_CPU_BF16``
    (``0``/``1``) overrides the detection."""
    forced = os.environ.get("SPEECHLM_CPU_BF16", "")
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"SPEECHLM_CPU_BF16 is 0 or 1, got {forced!r}")
        return forced == "1"
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype (None = fp32, no autocast) of ``precision`` on ``device``."""
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if kind == "cpu":
        if precision == "fp16":
            raise ValueError("precision fp16 needs a GPU; on CPU use fp32 or bf16")
        if precision == "auto" and not cpu_has_bf16():
            return None
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if kind != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(precision: str | torch.dtype | None, device: torch.device | str):
    """A context that runs ``precision`` (a name of :data:`PRECISIONS` or an autocast dtype;
    None = fp32) on ``device``."""
    dtype = autocast_dtype(precision, device) if isinstance(precision, str) else precision
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


__all__ = ["PRECISIONS", "autocast", "autocast_dtype", "cpu_has_bf16"]
