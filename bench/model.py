"""Training-step throughput of the SpeechLM against the bare backbone with the same shapes.

One step = forward (embedding + backbone + strategy head + loss) + backward + AdamW step. Two
baselines over the same number of positions: "backbone" is the bare backbone alone (random input
embeddings, a trivial loss, AdamW on its parameters): the ratio the issue targets; "text LM" adds a
token embedding and one full-vocabulary head with CE on every position. Prints one row per
strategy and precision: tokens/s (positions per second) and the ratios.

    OMP_NUM_THREADS=1 python bench/model.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.models import BuiltinDecoder, ModelConfig, SpeechLM
from speechlm.models.config import cpu_has_bf16
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary


def make_batch(vocab: Vocabulary, S: int, B: int, n_phones: int, n_frames: int, seed: int = 0):
    """TTS-shaped batch: ``n_phones`` phone conditions -> ``n_frames`` codec frames of S streams."""
    rng = np.random.default_rng(seed)
    tpl = load_template("plain_tts")
    exs = [build_example(f"u{i}", tpl, {"phones": rng.integers(0, 60, (n_phones, 1)),
                                        "speech": rng.integers(0, 1024, (n_frames, S))}, vocab, S) for i in range(B)]
    return collate(exs)


def timed(step, n: int, warmup: int = 1) -> float:
    """Seconds per call: the fastest of ``n`` calls (the CPU is shared; the minimum is the least noisy)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


class BareLM(torch.nn.Module):
    """Token embedding + backbone + full-vocabulary head: the baseline."""

    def __init__(self, cfg: ModelConfig, V: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, cfg.dim)
        self.backbone = BuiltinDecoder(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.backbone(self.emb(ids[:, :-1]))
        logits = h @ self.emb.weight.t()
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--phones", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--strategies", nargs="+", default=["parallel", "delay", "flat", "multiscale", "ar_nar"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vocab = Vocabulary()
    vocab.add_tokenizer("codec", [1024] * args.streams)
    vocab.add_tokenizer("phone", [60])
    vocab.add_task("plain_tts")
    batch = make_batch(vocab, args.streams, args.batch, args.phones, args.frames)
    precisions = ["fp32", "bf16"]
    print(f"threads={args.threads} dim={args.dim} layers={args.layers} streams={args.streams} batch={args.batch} "
          f"frames={args.frames} vocab={len(vocab)} cpu_bf16={cpu_has_bf16()}")
    print("| strategy | precision | positions/step | backbone tok/s | text LM tok/s | SpeechLM tok/s "
          "| vs backbone | vs text LM |")
    print("|---|---|---|---|---|---|---|---|")
    for strategy in args.strategies:
        for prec in precisions:
            cfg = ModelConfig(strategy=strategy, dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                              local_dim=128, local_layers=2, autocast="bf16" if prec == "bf16" else "none")
            torch.manual_seed(0)
            model = SpeechLM(cfg, vocab)
            with torch.no_grad():
                prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
            T = prep.kinds.shape[1]
            positions = args.batch * T
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def full_step():
                out = model(batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()

            bare = BareLM(cfg, len(vocab))
            bopt = torch.optim.AdamW(bare.parameters(), lr=1e-4)
            ids = torch.randint(0, len(vocab), (args.batch, T + 1))

            def bare_step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    loss = bare(ids)
                bopt.zero_grad(set_to_none=True)
                loss.backward()
                bopt.step()

            body = BuiltinDecoder(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim)
            oopt = torch.optim.AdamW(body.parameters(), lr=1e-4)
            x = torch.randn(args.batch, T, cfg.dim)

            def backbone_step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    loss = body(x).float().pow(2).mean()
                oopt.zero_grad(set_to_none=True)
                loss.backward()
                oopt.step()

            to, tb, tf = float("inf"), float("inf"), float("inf")
            for _ in range(2):  # interleaved rounds so that all see the same machine load
                to = min(to, timed(backbone_step, args.steps))
                tb = min(tb, timed(bare_step, args.steps))
                tf = min(tf, timed(full_step, args.steps))
            print(f"| {strategy} | {prec} | {positions} | {positions / to:,.0f} | {positions / tb:,.0f} | "
                  f"{positions / tf:,.0f} | {to / tf:.2f} | {tb / tf:.2f} |", flush=True)


if __name__ == "__main__":
    main()
