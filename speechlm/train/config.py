"""The training config: one dataclass, loaded strictly from YAML (presets: ``speechlm/conf/train/*.yaml``).

Unknown keys and wrong types are errors naming the key; ``speechlm train`` flags such as
``--max-steps`` override the file. Budgets are in optimizer steps and/or loss tokens (the run
stops at whichever comes first), never in wall time, so a run is reproducible.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from speechlm.config import ConfigError, load_config

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
STRATEGIES = ("ddp", "fsdp", "deepspeed")
SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Every knob of a training run (defaults suit a tiny CPU run)."""

    seed: int = 0
    # --- budget (at least one of the two) ---
    max_steps: int | None = 1000  # optimizer steps
    max_train_tokens: int | None = None  # loss-carrying positions seen, summed over ranks
    # --- batches ---
    batch_tokens: int = 4000  # per micro-batch and rank: longest x count
    max_batch_size: int | None = None
    grad_accum: int = 1  # micro-batches per optimizer step and rank
    pool_size: int = 2000  # examples sorted together for length bucketing
    num_workers: int = 0  # DataLoader processes reading token archives
    # --- optimizer and schedule ---
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    # --- devices and precision ---
    device: str = "auto"  # auto = cuda when available
    precision: str = "fp32"  # bf16/fp16 autocast on GPU; bf16 on CPU when supported; auto = best
    threads: int = 0  # torch threads per process; 0 = cores / processes on this node
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard) | deepspeed
    deepspeed_config: str | None = None  # JSON file (ZeRO stage etc.) for strategy deepspeed
    activation_checkpointing: bool = False
    # --- validation, checkpoints, logging ---
    valid_every: int = 500  # steps; 0 = only at the end
    valid_batch_tokens: int | None = None  # default: batch_tokens
    save_every: int = 500  # steps; a checkpoint is also written at the end
    keep_last: int = 2
    keep_best: int = 3  # by validation loss
    average_best: int = 0  # at the end, average the N best checkpoints into checkpoints/average
    log_every: int = 10
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True  # tqdm bar on rank 0
    log_example_ids: bool = False  # write example_ids.rank<r>.txt: step, global batch, ids (debugging)

    def validate(self, where: str = "train config") -> "TrainConfig":
        def choice(key: str, valid: tuple) -> None:
            if getattr(self, key) not in valid:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)!r} is not one of {', '.join(valid)}")

        choice("precision", PRECISIONS)
        choice("strategy", STRATEGIES)
        choice("schedule", SCHEDULES)
        choice("device", DEVICES)
        if self.max_steps is None and self.max_train_tokens is None:
            raise ConfigError(f"{where}: set max_steps or max_train_tokens (a budget is required)")
        for key in ("batch_tokens", "grad_accum", "pool_size", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        for key in ("max_steps", "max_train_tokens"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key} must be > 0 or null, got {getattr(self, key)}")
        if len(self.betas) != 2:
            raise ConfigError(f"{where}.betas must have two values, got {self.betas}")
        if self.strategy == "deepspeed" and not self.deepspeed_config:
            raise ConfigError(f"{where}.deepspeed_config: strategy deepspeed needs a DeepSpeed JSON file")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        return self


def load_train_config(path: str | os.PathLike | None, overrides: dict | None = None) -> TrainConfig:
    """Load ``path`` (or the defaults when None), apply ``overrides`` (non-None values), validate."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if path is None:
        from speechlm.config import from_dict

        return from_dict(TrainConfig, overrides, "train config").validate()
    return load_config(TrainConfig, path, overrides).validate(str(path))


__all__ = ["TrainConfig", "load_train_config"]
