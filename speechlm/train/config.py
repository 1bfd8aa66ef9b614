"""The training config: one dataclass, loaded strictly from YAML (presets: ``speechlm/conf/train/*.yaml``).

Unknown keys and wrong types are errors naming the key; ``speechlm train`` flags such as
``--max-steps`` override the file. Budgets are in optimizer steps and/or loss tokens (the run
stops at whichever comes first), never in wall time, so a run is reproducible.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from speechlm.config import ConfigError, from_dict, load_config
from speechlm.utils.precision import PRECISIONS

DISTRIBUTED = ("ddp", "fsdp", "deepspeed")
#: keys of older versions -> their new name (an old key is an error that names the new one)
RENAMED = {"strategy": "distributed", "progress": "progress_bar"}
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
    # the one precision setting of training (decoding has its own: the decode config's precision):
    # fp32 | bf16 | fp16 (autocast; fp16 on GPU only, with a loss scaler) | auto = bf16 on a GPU or
    # CPU that has it, else fp16 on a GPU, fp32 on CPU
    precision: str = "fp32"
    # torch threads per process; 0 = cores / processes on this node, followed while training (a run
    # given more cores with taskset -p takes them up)
    threads: int = 0
    distributed: str = "ddp"  # ddp (also one process) | fsdp (FSDP2 fully_shard) | deepspeed
    deepspeed_config: str | None = None  # JSON file (ZeRO stage etc.) for distributed: deepspeed
    activation_checkpointing: bool = False  # recompute each backbone layer in the backward pass (both backbones)
    # the text softmax of training: all (every column of the target's tokenizer) | seen (only the
    # tokens the training data holds: a pretrained tokenizer's unused pieces cost no time; decoding
    # and validation keep every column)
    softmax: str = "all"
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
    progress_bar: bool = True  # tqdm bar on rank 0
    log_example_ids: bool = False  # write example_ids.rank<r>.txt: step, global batch, ids (debugging)

    @classmethod
    def upgrade_keys(cls, data: dict, where: str) -> dict:
        """Keys of older versions are errors naming the new key (see :data:`RENAMED`)."""
        for old, new in RENAMED.items():
            if old in data:
                raise ConfigError(f"{where}: key {old!r} was renamed to {new!r}; write {new}: {data[old]!r}")
        return data

    def validate(self, where: str = "train config") -> "TrainConfig":
        def choice(key: str, valid: tuple) -> None:
            if getattr(self, key) not in valid:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)!r} is not one of {', '.join(valid)}")

        choice("precision", PRECISIONS)
        choice("distributed", DISTRIBUTED)
        choice("schedule", SCHEDULES)
        choice("device", DEVICES)
        choice("softmax", ("all", "seen"))
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
        if self.distributed == "deepspeed" and not self.deepspeed_config:
            raise ConfigError(f"{where}.deepspeed_config: distributed: deepspeed needs a DeepSpeed JSON file")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        return self


def load_train_config(path: str | os.PathLike | dict | None, overrides: dict | None = None) -> TrainConfig:
    """Load ``path`` (a YAML file; a mapping, as a run's ``config.yaml`` holds it; None: the
    defaults), apply ``overrides`` (non-None values), validate."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if path is None or isinstance(path, dict):
        return from_dict(TrainConfig, {**(path or {}), **overrides}, "train config").validate()
    return load_config(TrainConfig, path, overrides).validate(str(path))


def upgrade_run_config(dump: dict) -> dict:
    """A run dir's ``config.yaml`` as this version writes it: older runs stored the configs under
    ``train`` / ``model`` with keys since renamed (:data:`RENAMED`) or dropped (sequence packing,
    the model's autocast / grad_checkpointing); so that such a run resumes without a false change."""
    from speechlm.models.config import DROPPED_KEYS

    out = dict(dump or {})
    for old, new in (("train", "train_config"), ("model", "model_config")):
        if old in out and new not in out:
            out[new] = out.pop(old)
    train = out.get("train_config")
    if isinstance(train, dict):
        train = {RENAMED.get(k, k): v for k, v in train.items() if not (k == "pack" and not v)}
        out["train_config"] = train
    model = out.get("model_config")
    if isinstance(model, dict):
        out["model_config"] = {k: v for k, v in model.items() if k not in DROPPED_KEYS}
    return out


__all__ = ["TrainConfig", "load_train_config", "upgrade_run_config", "RENAMED", "PRECISIONS", "DISTRIBUTED"]
