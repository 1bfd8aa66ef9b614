"""Optional DeepSpeed engine (ZeRO from a JSON config); ``deepspeed`` is imported only here.

The JSON's ``gradient_accumulation_steps`` and ``train_micro_batch_size_per_gpu`` are set from
the train config (batches are token-budgeted, so the micro batch size is nominally 1); clipping
comes from ``gradient_clipping`` in the JSON, or from ``grad_clip``. The optimizer is ours
(AdamW), so schedules and resume behave as with DDP.
"""
from __future__ import annotations

import importlib
import json
import logging

import torch
from torch import nn

from speechlm.train.distributed import Distributed, DistEnv

log = logging.getLogger(__name__)


class DeepSpeedDistributed(Distributed):
    name = "deepspeed"

    def __init__(self, env: DistEnv, config_path: str | None = None, grad_accum: int = 1,
                 grad_clip: float = 0.0) -> None:
        super().__init__(env)
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:
            raise ImportError("distributed: deepspeed needs the deepspeed package: pip install deepspeed") from e
        self.config_path, self.grad_accum, self.grad_clip = config_path, grad_accum, grad_clip

    def setup(self, model: nn.Module, make_optimizer):
        import deepspeed

        with open(self.config_path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["gradient_accumulation_steps"] = self.grad_accum
        cfg["train_micro_batch_size_per_gpu"] = 1
        cfg.pop("train_batch_size", None)
        cfg.setdefault("gradient_clipping", self.grad_clip)
        model.to(self.env.device)
        optimizer = make_optimizer(model)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
        log.info("DeepSpeed engine ready (ZeRO stage %s)", cfg.get("zero_optimization", {}).get("stage", 0))
        return engine, optimizer

    def backward(self, module, loss: torch.Tensor, last: bool) -> None:
        # the engine divides by gradient_accumulation_steps; the trainer's scale already
        # normalizes the whole step, so undo that division
        module.backward(loss * self.grad_accum)
        module.step()  # the engine steps the optimizer only at the accumulation boundary

    def clip(self, module, max_norm: float) -> float:
        norm = module.get_global_grad_norm() if hasattr(module, "get_global_grad_norm") else None
        return float(norm) if norm is not None else float("nan")

    def optimizer_step(self, module, optimizer, scaler=None) -> None:
        pass  # done by the engine in backward()

    def model_state_dict(self, module) -> dict[str, torch.Tensor]:
        if hasattr(module, "zero_optimization_stage") and module.zero_optimization_stage() == 3:
            return {k: v.cpu() for k, v in module._zero3_consolidated_16bit_state_dict().items()}
        return {k: v.detach().cpu() for k, v in module.module.state_dict().items()}

    def load_model_state_dict(self, module, state: dict) -> None:
        module.module.load_state_dict(state, strict=True)

    def optimizer_state_dict(self, module, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, module, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def checkpoint_safe_globals(self) -> list:
        """Classes DeepSpeed's ZeRO optimizer puts into its state dict (loss scaler, stage enum,
        fragment addresses): allowed, besides tensors and plain data, when ``optimizer.pt`` is read
        with ``torch.load(weights_only=True)``. (Not exercised in the test suite: no deepspeed there.)"""
        found = []
        for mod, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                           ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                           ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
            try:
                m = importlib.import_module(mod)
            except ImportError:
                continue
            found += [getattr(m, n) for n in names if hasattr(m, n)]
        return found


__all__ = ["DeepSpeedDistributed"]
