"""Decode-path parity: the true target rows fed through the decoding loop step by step (prefill,
KV cache, the progress input as decoding computes it, the pattern's slot plan and feeding), with
the logits of every sampled slot compared to the teacher-forced ones.

The loop is :func:`speechlm.infer.generate.sample_decode` itself; only its chooser is replaced by
:class:`ForcingChooser`, which records the hidden state and logits decoding computed for each slot
and returns the true token instead of a sampled one (a forced slot keeps decoding's own token and
is checked against the truth). Both sides then saw the same history, so any difference beyond
float rounding is a mismatch between training and decoding.

Example:
    >>> rec = decode_forced(model, prompts, rows)          # rows: teacher.target_rows(...)
    >>> stats = ParityStats(model); stats.add(rows, rec)
    >>> stats.summary()["max_abs_diff"]                      # max |logit diff|, argmax agreement ...
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from speechlm.data.batch import Batch
from speechlm.diagnose.teacher import TargetRows, slot_logits
from speechlm.infer.config import DecodeConfig
from speechlm.infer.follow import PhoneFollower
from speechlm.infer.generate import Chooser, sample_decode
from speechlm.infer.steps import FORCE


@dataclass
class Recorded:
    """What decoding computed for one prompt: hidden state per step, logits and allowed-set key
    per sampled slot ``(step, model stream)``, the progress length it used, and every place where
    the decoding plan disagreed with the true layout."""

    h: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    keys: dict[tuple[int, int], tuple] = field(default_factory=dict)
    progress_len: int = 0
    mismatches: list[str] = field(default_factory=list)


class ForcingChooser(Chooser):
    """A chooser that records the decoder's logits and returns the true tokens of ``truth``.

    ``progress_len[b] > 0`` replaces the length decoding gives prompt ``b``'s progress input (the
    length head's prediction) before the first step reads it."""

    def __init__(self, model, config: DecodeConfig, generator: torch.Generator, *args, truth: list[TargetRows],
                 progress_len: list[int] | None = None, **kwargs) -> None:
        super().__init__(model, config, generator, *args, **kwargs)
        self.truth, self.override = truth, progress_len
        self.rec = [Recorded() for _ in truth]
        self.index: dict[int, int] = {}

    def _start(self) -> None:
        """First call: every row is active, in prompt order."""
        self.index = {id(st): b for b, st in enumerate(self.rows)}
        for b, st in enumerate(self.rows):
            if self.override is not None and self.override[b] > 0 and st.progress_len:
                st.progress_len = self.override[b]
            self.rec[b].progress_len = st.progress_len

    def __call__(self, k: int, h: torch.Tensor, acts: list[tuple]) -> torch.Tensor:
        if not self.index:
            self._start()
        pad = self.model.vocab.pad_id
        logits = None
        out = []
        for i, (st, act) in enumerate(zip(self.rows, acts)):
            b, j = self.index[id(st)], st.j
            tr, rec = self.truth[b], self.rec[b]
            true_id = int(tr.rows[j, k]) if j < len(tr.rows) else pad
            if k == 0:
                rec.h[j] = h[i].float().cpu()
                if j >= len(tr.rows):
                    rec.mismatches.append(f"step {j}: decoding goes on after the true segment's {len(tr.rows)} rows")
            if act[0] == FORCE:
                if act[1] != true_id:
                    rec.mismatches.append(f"step {j} stream {k}: decoding forces id {act[1]}, the layout has {true_id}")
                out.append(act[1])
                continue
            allowed = self.masker.mask(k, act[1], h.device)
            col = true_id if k == 0 else int(self.model.head.local_targets(
                torch.tensor([true_id], device=h.device), k)[0])
            if col < 0 or not bool(allowed[col]):
                rec.mismatches.append(f"step {j} stream {k}: the true id {true_id} is not allowed by decoding's plan")
            if logits is None:  # the full logits of the stream, as the chooser's general path computes them
                logits = self.model.logits(h, k).float().cpu()
            rec.logits[(j, k)] = logits[i]
            rec.keys[(j, k)] = act[1]
            out.append(true_id)
            tok, src = act[1][0], act[1][1]
            if st.follower is not None and st.follower.applies(tok, src):  # as the chooser tells it
                a, e = self.model.vocab.stream_range(tok, src)
                if a <= true_id < e:
                    st.follower.observe(true_id - a)
        return torch.tensor(out, device=h.device)


class TrueWalk(PhoneFollower):
    """The phone follower over a target's own phone stream, telling the progress input the length
    it is given (decoding stretches it while phones are left): the next-phone input training sees."""

    def length(self, j: int, predicted: int) -> int:
        return predicted


@contextlib.contextmanager
def _chooser(factory):
    """Decoding's chooser replaced by ``factory`` for one call of ``sample_decode`` (which builds
    its chooser from the module's ``Chooser``)."""
    module = sys.modules[sample_decode.__module__]  # (the package exports a function named `generate`)
    saved = module.Chooser
    module.Chooser = factory
    try:
        yield
    finally:
        module.Chooser = saved


def decode_forced(model, prompts: Batch, truth: list[TargetRows], progress_len: list[int] | None = None,
                  precision: str = "fp32", kv_cache: bool = True, length_scale: float = 1.0) -> list[Recorded]:
    """Run the decoding loop on ``prompts`` (each ending with its target's marker) with the true
    rows of ``truth`` forced; returns what decoding computed per prompt. A model that reads the
    next phone (``model.next_phone``) is told it by a follower of the true phone stream, walked as
    training walks it (:class:`TrueWalk`)."""
    cfg = DecodeConfig(search="greedy", max_len=max(len(t.frames) for t in truth) + 8, precision=precision,
                       kv_cache=kv_cache, length_scale=length_scale, batch_size=max(1, len(truth)))
    followers = None
    if model.next_phone is not None:
        followers = [TrueWalk(model.config.next_phone, 0, t.frames[:, 0].tolist()) for t in truth]
    made: list[ForcingChooser] = []

    def factory(*args, **kwargs) -> ForcingChooser:
        made.append(ForcingChooser(*args, truth=truth, progress_len=progress_len, **kwargs))
        return made[-1]

    with _chooser(factory):
        sample_decode(model, prompts, cfg, followers=followers)
    if len(made) != 1:
        raise RuntimeError(f"decode_forced: decoding built {len(made)} choosers, expected 1")
    return made[0].rec


class ParityStats:
    """Pooled comparison of decoding with the teacher-forced pass: per model stream, the slots
    compared, max and mean |logit difference| over the allowed columns, argmax agreement within the
    allowed set; the max |hidden state difference|; every mismatch of plan and layout."""

    def __init__(self, model) -> None:
        from speechlm.infer.steps import Masker

        self.model, self.masker = model, Masker(model)
        self.per: dict[int, dict[str, float]] = {}
        self.h_max = 0.0
        self.mismatches: list[str] = []

    def add(self, truth: list[TargetRows], recorded: list[Recorded]) -> None:
        for tr, rec in zip(truth, recorded):
            self.mismatches += [f"{tr.id}: {m}" for m in rec.mismatches]
            for j in range(len(tr.rows)):
                if j not in rec.h:
                    self.mismatches.append(f"{tr.id}: decoding never reached row {j} of {len(tr.rows)}")
                    break
                self.h_max = max(self.h_max, float((rec.h[j] - tr.h[j]).abs().max()))
            tf: dict[int, torch.Tensor] = {}
            for (j, k), dec in rec.logits.items():
                if j >= len(tr.rows):
                    continue
                if k not in tf:
                    tf[k] = slot_logits(self.model, tr.h, k)
                m = self.masker.mask(k, rec.keys[(j, k)], "cpu")
                a, d = tf[k][j][m], dec[m]
                diff = (a - d).abs()
                s = self.per.setdefault(k, {"slots": 0, "max_abs_diff": 0.0, "sum_abs_diff": 0.0, "argmax_agree": 0})
                s["slots"] += 1
                s["max_abs_diff"] = max(s["max_abs_diff"], float(diff.max()))
                s["sum_abs_diff"] += float(diff.mean())
                s["argmax_agree"] += int(a.argmax() == d.argmax())
            for j in range(len(tr.rows)):  # every slot the layout gives a loss must have been sampled
                for k in np.flatnonzero((tr.frame[j] >= 0) | tr.end[j]).tolist():
                    if (j, k) not in rec.logits:
                        self.mismatches.append(f"{tr.id}: row {j} stream {k} holds a target token but decoding "
                                               "did not sample it")

    def summary(self) -> dict:
        streams = {k: {"slots": int(s["slots"]), "max_abs_diff": s["max_abs_diff"],
                       "mean_abs_diff": s["sum_abs_diff"] / max(s["slots"], 1),
                       "argmax_agree": s["argmax_agree"] / max(s["slots"], 1)} for k, s in sorted(self.per.items())}
        n = sum(s["slots"] for s in streams.values())
        return {"streams": streams, "slots": n, "hidden_max_abs_diff": self.h_max,
                "max_abs_diff": max((s["max_abs_diff"] for s in streams.values()), default=0.0),
                "argmax_agree": sum(s["argmax_agree"] * s["slots"] for s in streams.values()) / max(n, 1),
                "n_mismatches": len(self.mismatches), "mismatches": self.mismatches[:20]}


__all__ = ["ForcingChooser", "Recorded", "decode_forced", "ParityStats"]
