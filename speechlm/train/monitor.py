"""What a user watches: a tqdm bar, TensorBoard scalars, a JSON-lines log and a PNG of the curves.

Only rank 0 writes. Files in the run dir::

    train_log.jsonl     one line per log interval / validation: {"step", "split", metrics...}
    tensorboard/        scalars (train/loss, train/acc, valid/loss@asr, lr, tokens_per_s ...)
    curves.png          train/valid loss and accuracy against step, redrawn at each validation
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Monitor:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool, total_steps: int | None, start_step: int = 0,
                 progress_bar: bool = True, tensorboard: bool = True, plot: bool = True) -> None:
        self.run_dir, self.enabled, self.plot_enabled = Path(run_dir), enabled, plot
        self.history: list[dict] = []
        self.bar = self.tb = None
        self._t0, self._tokens0 = time.monotonic(), 0
        if not enabled:
            return
        log_file = self.run_dir / "train_log.jsonl"
        if log_file.is_file():  # resumed: keep what was logged up to the checkpoint
            with open(log_file, encoding="utf-8") as f:
                self.history = [r for r in map(json.loads, f) if r.get("step", 0) <= start_step]
            with open(log_file, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)
        self._log = open(log_file, "a", encoding="utf-8")
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train", mininterval=1.0)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                log.warning("tensorboard is not installed; no TensorBoard logs")

    def step(self, step: int, tokens: int, metrics: dict[str, float] | None = None) -> None:
        """Advance the bar to ``step``; with ``metrics``, log them as a train record."""
        if not self.enabled:
            return
        now = time.monotonic()
        if metrics is not None:
            rate = (tokens - self._tokens0) / max(now - self._t0, 1e-9)
            self._t0, self._tokens0 = now, tokens
            metrics = {**metrics, "tokens_per_s": rate}
            self.record(step, "train", metrics)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{metrics.get('loss', math.nan):.3f}", tok_s=f"{rate:.0f}",
                                     refresh=False)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def record(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._log.write(json.dumps(row) + "\n")
        self._log.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if not k.endswith("/count") and math.isfinite(float(v)):
                    self.tb.add_scalar(f"{split}/{k}", float(v), step)
            self.tb.flush()
        if split == "valid":
            log.info("step %d valid: %s", step, " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("/count")))
            if self.plot_enabled:
                self.plot()

    def plot(self) -> Path | None:
        """Draw train/valid loss and accuracy into ``curves.png`` (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key in zip(axes, ("loss", "acc")):
            for split, style in (("train", "-"), ("valid", "o-")):
                pts = [(r["step"], r[key]) for r in self.history if r["split"] == split and key in r]
                if pts:
                    ax.plot(*zip(*pts), style, label=split, markersize=3)
            ax.set_xlabel("step"), ax.set_ylabel(key), ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        out = self.run_dir / "curves.png"
        tmp = out.with_name(".curves.tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, out)
        return out

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._log.close()


__all__ = ["Monitor"]
