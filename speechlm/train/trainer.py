"""The one trainer: setup / train / validate / save / load.

    trainer = Trainer(cfg, model_config, vocab, [DataSpec.parse("asr:mini:dump/train/asr:1")], "exp/tiny")
    trainer.setup()      # process group, model, data, optimizer; resumes the newest complete checkpoint
    trainer.train()      # until max_steps / max_train_tokens; validates, saves, averages

A step takes ``grad_accum`` micro-batches on each rank from the shared batch stream (see
:mod:`speechlm.data.sampler`) and normalizes the loss exactly over all of them
(:mod:`speechlm.train.numerics`), so the update does not depend on how the global batch is split
over ranks and accumulation steps. A non-finite loss (or gradient norm) stops the run before
the optimizer step, naming the example ids of the step; the last checkpoint stays the newest
good one. SIGTERM / SIGINT / SIGUSR1 finish the current step, save a checkpoint and stop; the
same command resumes, continuing the same data order (see ``docs`` of
:mod:`speechlm.train.checkpoint` for the run dir layout).
"""
from __future__ import annotations

import logging
import math
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from speechlm.data.dataset import DataSpec, MultiTaskData
from speechlm.data.loader import MixMeter, train_batches, valid_batches
from speechlm.data.sampler import BucketSampler
from speechlm.models.model_dir import init_weights, is_model_dir, read_weights, write_model
from speechlm.train import build
from speechlm.train.checkpoint import (average_checkpoints, best_checkpoints, is_complete, list_checkpoints,
                                       load_optimizer_state, load_rng, prune_checkpoints, read_state,
                                       resume_checkpoint, save_checkpoint)
from speechlm.train.config import TrainConfig
from speechlm.train.distributed import barrier, broadcast_object, init_distributed, make_distributed
from speechlm.train.integrity import CheckpointError, tensor_bytes
from speechlm.train.memory import peak_rss_mb
from speechlm.train.monitor import Monitor
from speechlm.train.numerics import StepStats, all_reduce_sum, lr_factor, micro_loss_scale, rescale_gradients
from speechlm.utils.precision import autocast, autocast_dtype
from speechlm.utils.threads import available_cores, set_threads
from speechlm.vocab import Vocabulary

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step's example ids."""


def _gather_objects(obj) -> list:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, model_config, vocab: Vocabulary, train_data: list[DataSpec],
                 out_dir: str, valid_data: list[DataSpec] | None = None, init_from: str | None = None,
                 run_files: dict[str, str | None] | None = None, config_dump: dict | None = None,
                 stop_after_steps: int | None = None, allow_config_change: bool = False) -> None:
        self.cfg, self.model_config, self.vocab = cfg, model_config, vocab
        self.train_specs, self.valid_specs = train_data, valid_data or []
        self.out_dir, self.ckpt_dir = Path(out_dir), Path(out_dir) / "checkpoints"
        self.init_from, self.run_files, self.config_dump = init_from, run_files or {}, config_dump or {}
        self.stop_after_steps = stop_after_steps  # testing: leave as if killed after this step
        self.allow_config_change = allow_config_change  # resuming with other options than the run's
        self.step = self.tokens = self.next_batch = 0
        self.last_valid: dict[str, float] = {}
        self._signal, self._stop_requested = 0, False

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        cfg = self.cfg
        self.env = env = init_distributed(cfg.device, cfg.threads)
        self.W, self.A = env.world_size, cfg.grad_accum
        self._check_resume_options()
        random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
        build.apply_init_source(self.model_config, self.init_from)
        from speechlm.models import SpeechLM

        self.model = SpeechLM(self.model_config, self.vocab)
        if self.init_from and is_model_dir(self.init_from):
            init_weights(self.model, self.init_from)
        if cfg.activation_checkpointing:
            build.enable_activation_checkpointing(self.model)
        torch.manual_seed(cfg.seed + env.rank)  # dropout differs per rank, the init did not
        self._setup_data()
        if cfg.softmax == "seen":
            kept, total = self.model.head.train_columns(torch.tensor(self.train_data.text_ids(), dtype=torch.int64))
            log.info("softmax: seen: training's stream-0 logits span %d of their %d columns", kept, total)
        tasks = {e.spec.task for e in self.train_data.entries}
        unknown = [t for t in self.model_config.ctc_tasks if t not in tasks]
        if unknown:
            raise ValueError(f"model.ctc_tasks: {', '.join(unknown)} not among the training data's tasks "
                             f"({', '.join(sorted(tasks))})")
        self.distributed = make_distributed(cfg.distributed, env, **({"config_path": cfg.deepspeed_config,
                                            "grad_accum": cfg.grad_accum, "grad_clip": cfg.grad_clip}
                                            if cfg.distributed == "deepspeed" else {}))
        self.module, self.optimizer = self.distributed.setup(self.model, lambda m: build.make_optimizer(m, cfg))
        self.amp = autocast_dtype(cfg.precision, env.device)  # the one precision setting of training
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        if env.is_main and not self._resuming:  # a resumed run keeps the kit it started with
            from speechlm.train.rundir import write_run_dir

            templates = {e.spec.task: e.template for e in self.train_data.entries}
            write_run_dir(self.out_dir, self.config_dump, self.W, self.run_files, templates)
        barrier()
        last = resume_checkpoint(self.ckpt_dir, env)  # verified; damaged ones are set aside
        if last is not None:
            self.load(last)
        self.monitor = Monitor(self.out_dir, env.is_main, cfg.max_steps, self.step, cfg.progress_bar and env.is_main,
                               cfg.tensorboard, cfg.plot)
        self._ids_file = None
        log.info("training %s parameters on %d process(es), %s, precision %s; %d train examples%s",
                 f"{sum(p.numel() for p in self.model.parameters()):,}", self.W, env.device,
                 self.amp or "fp32", len(self.train_data),
                 f", {len(self.valid_data)} valid" if self.valid_data else "")
        return self

    def _follow_cores(self) -> None:
        """Automatic threads follow the cores the process may use (recipes hand a finished
        neighbour's cores to a training that goes on: egs/voice_agent/speechlm1/run.sh)."""
        n = max(1, available_cores() // self.env.local_world_size)
        if n != torch.get_num_threads():
            log.info("step %d: the cores this process may use changed: %d -> %d torch threads", self.step,
                     torch.get_num_threads(), n)
            set_threads(n)

    def _check_resume_options(self) -> None:
        """Resuming (the run dir has its config.yaml and a checkpoint): compare the options with
        the original ones; other than budget changes need ``allow_config_change`` (collective)."""
        error = None
        if self.env.is_main:
            self._resuming = (self.out_dir / "config.yaml").is_file() and bool(list_checkpoints(self.ckpt_dir))
            if self._resuming:
                from speechlm.train.rundir import check_resume_config

                try:
                    step = int(read_state(list_checkpoints(self.ckpt_dir)[-1]).get("step", 0))
                except (CheckpointError, TypeError, ValueError):  # damaged: set aside when resuming
                    step = None
                try:
                    check_resume_config(self.out_dir, self.config_dump, self.run_files, self.allow_config_change,
                                        step)
                except ValueError as e:
                    error = e
        self._resuming, error = broadcast_object((getattr(self, "_resuming", False), error))
        if error is not None:
            raise error

    def _setup_data(self) -> None:
        """Index train/valid entries against the model's context; build the batch stream."""
        cfg = self.cfg
        rows, ctx = build.segment_rows_fn(self.model), build.model_context(self.model)
        n_streams = self.model.n_streams
        self.train_data = MultiTaskData(self.train_specs, self.vocab, n_streams, ctx, cfg.seed, rows)
        self.valid_data = None
        if self.valid_specs:
            try:
                self.valid_data = MultiTaskData(self.valid_specs, self.vocab, n_streams, ctx, cfg.seed, rows,
                                                drop_empty=True)
            except ValueError as e:
                log.warning("no validation: %s", e)
        weights = [s.weight for s in self.train_specs]
        self.sampler = BucketSampler(self.train_data.lengths(), weights, cfg.batch_tokens, cfg.max_batch_size,
                                     cfg.pool_size, cfg.seed)
        self.mix = MixMeter([s.key for s in self.train_specs], weights)

    # ---- budget and schedule -----------------------------------------------------------------
    def finished(self) -> bool:
        c = self.cfg
        return (c.max_steps is not None and self.step >= c.max_steps) or (
            c.max_train_tokens is not None and self.tokens >= c.max_train_tokens)

    def budget_used(self) -> float:
        """The share of the budget (steps or tokens, whichever is further) used so far, in [0, 1]."""
        c, p = self.cfg, 0.0
        if c.max_steps:
            p = max(p, self.step / c.max_steps)
        if c.max_train_tokens:
            p = max(p, self.tokens / c.max_train_tokens)
        return p

    def lr(self) -> float:
        c = self.cfg
        return c.lr * lr_factor(self.budget_used(), self.step, c.warmup_steps, c.schedule, c.min_lr_ratio)

    # ---- training ----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Run until the budget is used; returns the last validation metrics."""
        cfg, env = self.cfg, self.env
        batches = iter(train_batches(self.train_data, self.sampler, self.next_batch, env.rank, self.W,
                                     cfg.num_workers, self.vocab.pad_id))
        interval = StepStats()
        saved_at = validated_at = self.step
        was_finished = self.finished()
        if was_finished and env.is_main:
            log.info("%s already trained %d steps: nothing to do", self.out_dir, self.step)
        self._signal = 0
        handlers = self._catch_signals()
        try:
            while not self.finished():
                micro = [next(batches) for _ in range(self.A)]
                for a, b in enumerate(micro):
                    want = self.next_batch + a * self.W + env.rank
                    if b.meta["index"] != want:
                        raise RuntimeError(f"data order broken: got global batch {b.meta['index']}, expected {want}")
                loss = self.train_step(micro, interval)
                if cfg.threads <= 0 and env.device.type == "cpu":
                    self._follow_cores()
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log_interval(interval, loss)
                    interval = StepStats()
                else:
                    self.monitor.step(self.step, self.tokens)
                if self.valid_data is not None and cfg.valid_every and self.step % cfg.valid_every == 0:
                    self.validate()
                    validated_at = self.step
                if (cfg.save_every and self.step % cfg.save_every == 0) or validated_at == self.step:
                    self.save()
                    saved_at = self.step
                if self.stop_after_steps is not None and self.step >= self.stop_after_steps:
                    log.warning("stopping after step %d as asked (--stop-after-steps)", self.step)
                    return self.last_valid
                if self._stop_requested:
                    if saved_at != self.step:
                        self.save()
                    log.warning("stopped by signal %d after step %d, checkpoint saved; run the same command "
                                "to resume", self._signal, self.step)
                    return self.last_valid
            if self.valid_data is not None and validated_at != self.step:
                self.validate()
            if saved_at != self.step:
                self.save()
            averaged = was_finished and is_complete(self.ckpt_dir / "average")
            if cfg.average_best > 0 and env.is_main and not averaged:
                best = best_checkpoints(self.ckpt_dir, cfg.average_best)
                if best:
                    average_checkpoints(best, self.ckpt_dir / "average")
            mix = self._global_mix()
            if env.is_main:
                peak = peak_rss_mb()
                log.info("training done: %d steps, %d tokens; mix observed (examples): %s%s", self.step,
                         self.tokens, mix.report(), f"; peak RSS {peak:.0f} MB" if peak else "")
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            self.monitor.close()
        return self.last_valid

    def _catch_signals(self) -> dict:
        """SIGTERM / SIGINT / SIGUSR1 (cluster preemption, Ctrl-C): finish the step, save, stop."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            if self._signal:  # second signal: stop now
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("signal %d: stopping after this step (send it again to stop at once)", signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            old[sig] = signal.signal(sig, handler)
        return old

    def train_step(self, micro: list, interval: StepStats | None = None) -> float:
        """One optimizer step over this rank's micro-batches; returns the step's exact mean loss."""
        env, cfg = self.env, self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr()
        local = torch.tensor([sum(float(b.loss_weight.sum()) for b in micro)])
        est = float(all_reduce_sum(local)[0])
        scale = micro_loss_scale(est, self.W)
        acc = torch.zeros(3, dtype=torch.float64, device=env.device)  # loss_sum, weight_sum, positions
        self.module.train()
        for a, batch in enumerate(micro):
            self.mix.update(batch)
            self._record_ids(batch)
            batch = batch.to(env.device)
            with autocast(self.amp, env.device):
                out = self.module(batch)
            # d(loss * weight_sum) = d(loss_sum): the model's loss_sum is detached, its loss is not
            loss = out.loss * out.weight_sum.detach().to(out.loss.dtype) * scale
            if self.scaler is not None:
                loss = self.scaler.scale(loss)
            self.distributed.backward(self.module, loss, last=a == len(micro) - 1)
            acc += torch.stack([out.loss_sum.double(), out.weight_sum.double(), batch.lengths.sum().double()])
            if interval is not None:
                interval.add_output(out, batch.tasks)
        stop = torch.tensor([float(bool(self._signal))], dtype=torch.float64)  # any rank signalled: all stop
        loss_sum, weight_sum, positions, stop = all_reduce_sum(torch.cat([acc.cpu(), stop])).tolist()
        self._stop_requested = stop > 0
        mean = loss_sum / weight_sum if weight_sum else float("nan")
        if not math.isfinite(mean):
            self._diverged(micro, mean)
        if self.distributed.name != "deepspeed":
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            rescale_gradients(self.module.parameters(), est / weight_sum)
        self.grad_norm = self.distributed.clip(self.module, cfg.grad_clip)
        if self.scaler is None and self.distributed.name != "deepspeed" and not math.isfinite(self.grad_norm):
            self._diverged(micro, mean, what=f"gradient norm is {self.grad_norm}")
        self.distributed.optimizer_step(self.module, self.optimizer, self.scaler)
        self.step += 1
        self.tokens += int(positions)
        self.next_batch += self.A * self.W
        return mean

    def _diverged(self, micro: list, loss: float, what: str | None = None) -> None:
        ids = [i for rank_ids in _gather_objects([i for b in micro for i in b.ids]) for i in rank_ids]
        self.optimizer.zero_grad(set_to_none=True)
        msg = (f"{what or f'loss is {loss}'} at step {self.step + 1}; examples of this step: {', '.join(ids)}. "
               f"Stopped without updating; the newest checkpoint in {self.ckpt_dir} is the last good one")
        log.error(msg)
        raise TrainingDiverged(msg)

    def _record_ids(self, batch) -> None:
        if not self.cfg.log_example_ids:
            return
        if self._ids_file is None:
            path = self.out_dir / f"example_ids.rank{self.env.rank}.txt"
            kept = []
            if path.is_file():  # resumed: drop what was read after the checkpoint
                kept = [ln for ln in path.read_text().splitlines() if int(ln.split("\t")[0]) <= self.step]
            path.write_text("".join(ln + "\n" for ln in kept))
            self._ids_file = open(path, "a", encoding="utf-8")
        self._ids_file.write(f"{self.step + 1}\t{batch.meta['index']}\t{' '.join(batch.ids)}\n")
        self._ids_file.flush()

    def _log_interval(self, interval: StepStats, loss: float) -> None:
        names = sorted({k for keys in _gather_objects(sorted(interval.sums)) for k in keys})
        metrics = {k: v for k, v in interval.reduce(names).items() if not k.endswith("/count")}
        mix = self._global_mix()
        total = sum(mix.examples.values()) or 1
        metrics.update({f"mix@{name}": mix.examples[d] / total for d, name in enumerate(mix.names)})
        metrics.update(step_loss=loss, lr=self.lr(), grad_norm=self.grad_norm)
        self.monitor.step(self.step, self.tokens, metrics)
        if self.env.is_main and self.step % (self.cfg.log_every * 10) == 0:
            log.info("step %d: loss %.4f; mix observed (examples): %s", self.step, metrics.get("loss", loss),
                     mix.report())

    def _global_mix(self) -> MixMeter:
        """Examples per entry consumed so far, summed over ranks (collective)."""
        counts = all_reduce_sum(torch.tensor([float(self.mix.examples[d]) for d in range(len(self.train_specs))]))
        mix = MixMeter(self.mix.names, [s.weight for s in self.train_specs])
        mix.merge([int(c) for c in counts.tolist()])
        return mix

    # ---- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and stats over the whole validation data, overall and per task (``loss@asr``)."""
        stats = StepStats()
        self.module.eval()
        for batch, counts in valid_batches(self.valid_data, self.cfg.valid_batch_tokens or self.cfg.batch_tokens,
                                           self.env.rank, self.W, self.cfg.num_workers, self.vocab.pad_id,
                                           self.cfg.max_batch_size):
            with autocast(self.amp, self.env.device):
                out = self.module(batch.to(self.env.device))
            if counts:
                stats.add_output(out, batch.tasks)
        self.module.train()
        names = sorted({k for keys in _gather_objects(sorted(stats.sums)) for k in keys})
        self.last_valid = {k: v for k, v in stats.reduce(names).items() if not k.endswith("/count")}
        self.monitor.record(self.step, "valid", self.last_valid)
        return self.last_valid

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self, mix_examples: list[int]) -> dict:
        return {
            "step": self.step, "tokens": self.tokens, "next_batch": self.next_batch,
            "sampler": self.sampler.state_dict(self.next_batch),
            "schedule": {"lr": self.cfg.lr, "budget_used": self.budget_used(), "schedule": self.cfg.schedule},
            "valid": self.last_valid if self.last_valid else {},
            "mix_examples": mix_examples,
            "world_size": self.W, "grad_accum": self.A,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def save(self) -> Path:
        """Write ``checkpoints/step_N`` (collective), then prune to keep_last + keep_best."""
        model_state = self.distributed.model_state_dict(self.module)
        optim_state = self.distributed.optimizer_state_dict(self.module, self.optimizer)
        mix = [self._global_mix().examples[d] for d in range(len(self.train_specs))]
        path = save_checkpoint(self.ckpt_dir, self.step, self.env,
                               lambda d: write_model(self.model, d, model_state), optim_state, self.state(mix),
                               size_hint=tensor_bytes(model_state) + tensor_bytes(optim_state))
        if self.env.is_main:
            prune_checkpoints(self.ckpt_dir, self.cfg.keep_last, self.cfg.keep_best)
        barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint dir: model, optimizer, schedule, sampler position, RNG."""
        path = Path(path)
        state = read_state(path)
        self.distributed.load_model_state_dict(self.module, read_weights(self.model, path))
        # weights_only: a crafted pickle is refused, never run
        optim = load_optimizer_state(path, getattr(self.distributed, "checkpoint_safe_globals", list)())
        if optim is not None:
            self.distributed.load_optimizer_state_dict(self.module, self.optimizer, optim)
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.next_batch = self.sampler.load_state_dict(state["sampler"])
        self.last_valid = state.get("valid", {})
        for d, n in enumerate(state.get("mix_examples", [])):
            self.mix.examples[d] = n if self.env.is_main else 0
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("world_size") != self.W or state.get("grad_accum") != self.A:
            log.warning("resuming with %d process(es) x %d accumulation, the checkpoint used %s x %s: the data "
                        "order continues, but steps now hold a different number of batches",
                        self.W, self.A, state.get("world_size"), state.get("grad_accum"))
        load_rng(path, self.env.rank)
        log.info("resumed from %s (step %d, %d tokens, next global batch %d)", path, self.step, self.tokens,
                 self.next_batch)


__all__ = ["Trainer", "TrainingDiverged"]
