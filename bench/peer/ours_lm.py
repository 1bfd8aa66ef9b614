"""Our side of the peer comparison: speechlm's strategies at ESPnet-SpeechLM's shapes.

    OMP_NUM_THREADS=2 python bench/peer/ours_lm.py --threads 2 [--json rows.json]

Same shapes as ``bench/peer/espnet_lm.py``: width 256, 4 heads, 6 global layers (multiscale: a
2-layer, 256-wide, 4-head local transformer), 8 codebooks of 256 (2048 codebook entries in all, as
ESPnet's vocabulary), a training step (forward + backward + AdamW) on batch 8 x 256 frames, of
which the first 1/8 are a condition (ESPnet's prefix), and greedy decoding of 100 frames after a
50-frame audio condition for 1 and 8 rows (8 copies of the prompt: ESPnet's ``nbest`` 8). Random
weights (speed does not depend on them); lengths forced (``min_len = max_len``). Every figure is
the median of repeated runs after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the timing helper
from timing import median_time  # noqa: E402

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate
from speechlm.models import ModelConfig, SpeechLM
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary

TASK = "speech_enhancement"  # audio condition -> audio target: ESPnet's prefix + continuation




def peer_vocab(nq: int, codebook: int) -> Vocabulary:
    v = Vocabulary()
    v.add_tokenizer("codec", [codebook] * nq)
    v.add_task(TASK)
    return v


def peer_model(strategy: str, vocab: Vocabulary, dim: int, heads: int, layers: int, local_layers: int) -> SpeechLM:
    extra = dict(local_dim=dim, local_layers=local_layers, local_heads=heads) if strategy == "multiscale" else {}
    torch.manual_seed(0)
    return SpeechLM(ModelConfig(strategy=strategy, dim=dim, n_layers=layers, n_heads=heads, **extra), vocab)


def examples(vocab: Vocabulary, nq: int, codebook: int, B: int, cond: int, target: int, with_targets: bool,
             same: bool = False):
    """``B`` rows of ``cond`` condition frames and ``target`` target frames (``same``: one prompt repeated)."""
    tpl = load_template(TASK)
    exs = []
    for i in range(B):
        rng = np.random.default_rng(0 if same else i)
        exs.append(build_example(f"u{i}", tpl, {"noisy": rng.integers(0, codebook, (cond, nq)),
                                                "clean": rng.integers(0, codebook, (max(target, 1), nq))},
                                 vocab, nq, with_targets=with_targets))
    return collate(exs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--nq", type=int, default=8)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--local-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--gen-frames", type=int, default=100)
    ap.add_argument("--prompt-frames", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timed decodes per row count (median)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--strategies", nargs="+", default=["multiscale", "delay", "parallel"])
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vocab = peer_vocab(a.nq, a.codebook)
    batch = examples(vocab, a.nq, a.codebook, a.B, a.T // 8, a.T - a.T // 8, True)
    rows: list[dict] = []
    for strategy in a.strategies:
        model = peer_model(strategy, vocab, a.dim, a.heads, a.layers, a.local_layers)
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer

        def train_step() -> None:
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        dt = median_time(train_step, a.steps)
        rows.append({"impl": "speechlm", "model": strategy, "what": "train", "rows": a.B, "frames": a.T,
                     "params_m": params / 1e6, "s": dt, "frames_per_s": a.B * a.T / dt})
        print(f"| speechlm {strategy} | train | {a.B} x {a.T} | {params / 1e6:.1f}M | {dt * 1000:.0f} ms | "
              f"{a.B * a.T / dt:,.0f} frames/s |", flush=True)
        if a.no_decode:
            continue
        model.eval()
        n = a.gen_frames
        for R in a.rows:
            prompts = examples(vocab, a.nq, a.codebook, R, a.prompt_frames, 0, False, same=True)
            dt = median_time(lambda: generate(model, prompts, DecodeConfig(min_len=n, max_len=n)), a.rounds)
            rows.append({"impl": "speechlm", "model": strategy, "what": "decode", "rows": R, "frames": n,
                         "params_m": params / 1e6, "s": dt, "frames_per_s": R * n / dt})
            print(f"| speechlm {strategy} | decode | {R} x {n} | {params / 1e6:.1f}M | {dt:.2f} s | "
                  f"{R * n / dt:,.0f} frames/s |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": {"threads": a.threads}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
