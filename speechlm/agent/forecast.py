"""Cheap forecasts of task success: teacher-forced token statistics per checkpoint.

For each checkpoint of a training run the model reads the held-out *reference trajectories*
(every assistant step of the held-out episodes as a dialogue-task example: the request, the
history so far, the reference next turn), teacher forced, and we measure over the target tokens
(the reference turn and its end token):

- ``entropy``: mean entropy (nats) of the model's next-token distribution;
- ``nll``: mean negative log-likelihood of the reference token (the validation loss);
- ``top1`` / ``top5``: how often the reference token is the most likely / among the 5 most likely;
- ``rank``: mean rank of the reference token (1 = most likely).

The distribution is the one decoding samples from: stream 0 over the target's tokenizer range
and the special tokens when the model scores by groups, else the whole vocabulary.

Next to each checkpoint's task success (from an agent run per checkpoint), the Spearman rank
correlation across checkpoints tells whether a statistic orders checkpoints like success does,
so a user can pick checkpoints without running every episode.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

STATS = ("entropy", "nll", "top1", "top5", "rank")


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson correlation of the ranks); None when undefined
    (fewer than 3 pairs, or a constant series)."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    rx, ry = rankdata([p[0] for p in pairs]), rankdata([p[1] for p in pairs])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else None


@dataclass
class TokenStats:
    n: int = 0
    entropy: float = 0.0
    nll: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    rank: float = 0.0

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate over rows of ``logits [N, C]`` with reference columns ``target [N]``."""
        ok = target >= 0
        logits, target = logits[ok].float(), target[ok]
        if not len(target):
            return
        logp = logits.log_softmax(-1)
        ref = logits.gather(1, target[:, None])
        rank = (logits > ref).sum(-1) + 1
        self.n += len(target)
        self.entropy += float(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1).sum())
        self.nll += float(-logp.gather(1, target[:, None]).sum())
        self.top1 += float((rank == 1).sum())
        self.top5 += float((rank <= 5).sum())
        self.rank += float(rank.float().sum())

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"tokens": self.n, "entropy": self.entropy / n, "nll": self.nll / n, "top1": 100.0 * self.top1 / n,
                "top5": 100.0 * self.top5 / n, "rank": self.rank / n}


@torch.no_grad()
def token_stats(model, examples: list, batch_size: int = 16, precision: str = "fp32") -> dict[str, float]:
    """Teacher-forced statistics of ``model`` over the stream-0 target tokens of ``examples``
    (``speechlm.data.sequence.Example`` with targets), in ``precision`` (decoding's)."""
    from speechlm.data.batch import collate
    from speechlm.models.losses import stream0_groups

    model.eval()
    dev = next(model.parameters()).device
    head = model.head
    acc = TokenStats()
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], model.vocab.pad_id).to(dev)
        with model.autocast(dev, precision):
            h, prep = model.hidden_states(batch)
            y, w = model.targets(prep)
            lay = prep.layout
            rows_in = lay.tokens.gather(1, prep.last.clamp(min=0)[..., None].expand(-1, -1, lay.tokens.shape[2]))
            sel = w[..., 0] > 0
            hs, ys, rin = h[sel], y[sel], rows_in[sel]
            hs = model.stream0_hidden(hs)  # through a depth head's first step where there is one
            y0 = ys[:, 0]
            if hasattr(head, "g0_of"):
                groups = stream0_groups(head, y0, rin)
                for g in groups.unique().tolist():
                    m = groups == g
                    if g < 0:
                        acc.add(head.logits(hs[m], 0), y0[m])
                    else:
                        logits, local = head.group_logits(hs[m], y0[m], g)
                        acc.add(logits, local)
            else:
                acc.add(head.logits(hs, 0), y0)
    return acc.summary()


# ---- reference trajectories ------------------------------------------------------------------------
def examples_from_dump(spec: str, vocab, n_streams: int, limit: int = 0) -> list:
    """Examples of a tokenized manifest dir given as ``task:name:dumpdir`` (e.g. the recipe's
    held-out ``spoken_dialogue`` dump)."""
    from speechlm.data.dataset import DataSpec, TaskData

    data = TaskData(DataSpec.parse(spec), vocab, n_streams)
    n = len(data) if not limit else min(limit, len(data))
    return [data.example(i) for i in range(n)]


def examples_from_steps(steps: Iterable[dict], template, tokenizers: dict, vocab, n_streams: int,
                        audio_base: Optional[Path] = None) -> list:
    """Examples from reference steps ``{"id", <segment name>: value ...}`` (values: wav paths for
    audio segments, text for text segments), tokenized with ``tokenizers``; audio of one
    path is encoded once."""
    from speechlm.agent.loop import resolve_audio
    from speechlm.data.audio import load_audio
    from speechlm.data.sequence import build_example
    from speechlm.tokenizers import AudioTokenizer

    cache: dict[tuple[str, str], np.ndarray] = {}
    out = []
    for st in steps:
        segs = {}
        for seg in template.segments:
            if seg.name not in st:
                raise KeyError(f"reference step {st.get('id')!r} has no value for segment {seg.name!r} of task "
                               f"{template.name!r}")
            tok, v = tokenizers[seg.tokenizer], st[seg.name]
            if isinstance(tok, AudioTokenizer):
                path = resolve_audio(v, audio_base)
                key = (seg.tokenizer, path)
                if key not in cache:
                    cache[key] = tok.encode(load_audio(path, tok.sample_rate, st.get("id")), tok.sample_rate)
                segs[seg.name] = cache[key]
            else:
                segs[seg.name] = tok.encode(v)
        out.append(build_example(str(st.get("id")), template, segs, vocab, n_streams))
    return out


def reference_steps(episodes: list, template) -> list[dict]:
    """The reference assistant steps of ``episodes`` as values of ``template``'s segments, from
    the data-dir writer's :func:`speechlm.agent.datadir.dialogue_steps` (so they are exactly the
    training examples' form); segments are filled by their data-dir source file."""
    from speechlm.agent.datadir import dialogue_steps

    out = []
    for ep in episodes:
        for k, step in enumerate(dialogue_steps(ep)):
            turn = ep.turns[step.user]
            by_source = {"wav.scp": turn.get("audio"), "text": " ".join(turn["text"].split()),
                         "history": step.history, "history.cascade": step.history_cascade, "known": step.known,
                         "response": step.target,
                         "text.2": step.target.split(" ", 1)[1] if step.target.startswith("call ") else None}
            rec = {"id": f"{ep.id}-{k:02d}"}
            for seg in template.segments:
                v = by_source.get(seg.source)
                if v is None:
                    break  # this task has no example for this step (e.g. spoken_command after the first)
                rec[seg.name] = v
            else:
                out.append(rec)
    return out


# ---- checkpoints -------------------------------------------------------------------------------------
def find_checkpoints(exp_dir: Path, names: Optional[list[str]] = None) -> list[Path]:
    from speechlm.train.checkpoint import list_checkpoints

    if names:
        out = []
        for n in names:
            p = Path(n)
            if not (p / "model.safetensors").is_file():
                p = exp_dir / "checkpoints" / n
            if not (p / "model.safetensors").is_file():
                raise FileNotFoundError(f"checkpoint {n!r}: no model.safetensors in {n} or {p}")
            out.append(p)
        return out
    found = list_checkpoints(exp_dir / "checkpoints")
    if not found:
        raise FileNotFoundError(f"no complete checkpoints in {exp_dir / 'checkpoints'}")
    return found


def checkpoint_step(path: Path) -> Optional[int]:
    import json

    f = path / "trainer_state.json"
    if f.is_file():
        return json.loads(f.read_text()).get("step")
    digits = "".join(c for c in path.name if c.isdigit())
    return int(digits) if digits else None


def pipeline_for(ckpt: Path, exp_dir: Path, decode_config: Optional[str] = None):
    """A Pipeline of checkpoint ``ckpt`` with the run's tokenizers and tasks (decode options from
    ``decode_config``, else the run's ``decode.yaml`` or its packed model's, if there is one)."""
    from speechlm.infer.pipeline import Pipeline

    dc = decode_config or next((p for p in (exp_dir / "decode.yaml", exp_dir / "packed" / "decode.yaml")
                                if p.is_file()), None)
    return Pipeline.assemble(ckpt, exp_dir, dc)


def render_table(rows: list[dict], correlations: dict[str, Optional[float]]) -> str:
    def f(v, d):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["| checkpoint | step | tokens | entropy | NLL | top-1 % | top-5 % | mean rank | success % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['step'] if r['step'] is not None else '-'} | {r['tokens']} | "
                     f"{f(r['entropy'], 3)} | {f(r['nll'], 3)} | {f(r['top1'], 1)} | {f(r['top5'], 1)} | "
                     f"{f(r['rank'], 2)} | {f(r.get('success'), 1)} |")
    lines += ["", "Spearman rank correlation with task success across checkpoints "
              "(entropy, NLL and rank should correlate negatively, top-k positively):", ""]
    lines += ["| statistic | Spearman rho |", "|---|---:|"]
    lines += [f"| {k} | {f(v, 3)} |" for k, v in correlations.items()]
    return "\n".join(lines) + "\n"


__all__ = ["token_stats", "spearman", "rankdata", "TokenStats", "examples_from_dump", "examples_from_steps",
           "find_checkpoints", "pipeline_for", "render_table", "STATS"]
