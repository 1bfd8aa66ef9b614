"""Process setup under torchrun, and the ways of training over processes (DDP, FSDP2, DeepSpeed).

``speechlm train`` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by ``torchrun``); with more
than one process it joins a process group: NCCL on GPU, gloo on CPU. A :class:`Distributed` object
(the train config's ``distributed`` key) wraps the model and owns what differs between engines
(gradient sync, backward, full state dicts)::

    distributed = make_distributed("ddp", env)
    module = distributed.wrap(model)                 # forward through this
    with distributed.no_sync(module, last=False): loss.backward()
    state = distributed.model_state_dict(module)     # full, on CPU, on every rank
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from speechlm.utils.threads import available_cores, set_threads

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", threads: int = 0) -> DistEnv:
    """Read the torchrun environment, pick the device, set threads, join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    n = set_threads(threads if threads > 0 else None, jobs=local_world)
    if rank != 0:  # one copy of the info log; warnings and errors from every rank
        logging.getLogger("speechlm").setLevel(max(logging.WARNING, logging.getLogger("speechlm").level))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if use_cuda else {}))
        log.info("rank %d/%d joined the %s process group (device %s, %d threads of %d cores)",
                 rank, world, backend, dev, n, available_cores())
    return DistEnv(rank, world, local_rank, local_world, dev)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside DDP / DeepSpeed wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module


class Distributed:
    """Single process or DDP (the default)."""

    name = "ddp"

    def __init__(self, env: DistEnv) -> None:
        self.env = env

    def wrap(self, model: nn.Module) -> nn.Module:
        model.to(self.env.device)
        if not self.env.distributed:
            return model
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        # multi-task batches leave some parameters unused (heads of absent segment kinds)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def setup(self, model: nn.Module, make_optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap ``model`` and build its optimizer with ``make_optimizer(module)``."""
        module = self.wrap(model)
        return module, make_optimizer(module)

    def backward(self, module: nn.Module, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch (gradients sync across ranks only on the ``last``)."""
        with self.no_sync(module, last):
            loss.backward()

    def optimizer_step(self, module: nn.Module, optimizer, scaler=None) -> None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def no_sync(self, module: nn.Module, last: bool):
        """Context for one micro-batch's backward: gradients sync only on the ``last`` one."""
        if last or not isinstance(module, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    def model_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(unwrap(module) if self.name != "fsdp" else module,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_model_state_dict(self, module: nn.Module, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(unwrap(module) if self.name != "fsdp" else module, state,
                             options=StateDictOptions(full_state_dict=True, strict=True))

    def optimizer_state_dict(self, module: nn.Module, optimizer) -> dict:
        """Positional ``optimizer.state_dict()`` (exact, and right with tied weights)."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, module: nn.Module, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def clip(self, module: nn.Module, max_norm: float) -> float:
        """Clip the global gradient norm (0 = only measure it); returns the norm before clipping."""
        params = [p for p in module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)


def _touch_root_params(module: nn.Module, inputs, out):
    """Give every root parameter a (zero) gradient: FSDP2 reduce-scatters only the gradients that
    exist, so a head unused by one rank's batch (e.g. no audio target) would desynchronize ranks."""
    from torch.distributed.tensor import DTensor

    touch = sum(p.sum() for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor))
    if hasattr(out, "loss") and torch.is_tensor(touch):
        out.loss = out.loss + 0.0 * touch.to(out.loss.dtype)
    return out


class FSDPDistributed(Distributed):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): each repeated block, then the root."""

    name = "fsdp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        model.to(self.env.device)
        if not self.env.distributed:
            return model
        # before fully_shard, so it runs while the root's parameters are still gathered
        model.register_forward_hook(_touch_root_params)
        for sub in model.modules():
            if isinstance(sub, nn.ModuleList):
                for block in sub:
                    fully_shard(block)
        fully_shard(model)
        return model

    def optimizer_state_dict(self, module: nn.Module, optimizer) -> dict:
        """Full (gathered) optimizer state keyed by parameter name (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(self, module: nn.Module, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # strict=False: a parameter that never had a gradient (unused head) has no AdamW state
        set_optimizer_state_dict(module, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, strict=False))

    def no_sync(self, module: nn.Module, last: bool):
        if hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()


def make_distributed(name: str, env: DistEnv, **deepspeed_options) -> Distributed:
    """``ddp`` | ``fsdp`` | ``deepspeed`` (imported only when asked for)."""
    if name == "ddp":
        return Distributed(env)
    if name == "fsdp":
        return FSDPDistributed(env)
    if name == "deepspeed":
        from speechlm.train.deepspeed import DeepSpeedDistributed

        return DeepSpeedDistributed(env, **deepspeed_options)
    raise ValueError(f"unknown distributed {name!r}; valid: ddp, fsdp, deepspeed")


__all__ = ["DistEnv", "init_distributed", "barrier", "cleanup", "broadcast_object", "unwrap",
           "Distributed", "FSDPDistributed", "make_distributed"]
