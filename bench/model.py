"""Training-step throughput of the SpeechLM against the bare backbone with the same shapes.

One step = forward (embedding + backbone + strategy head + loss) + backward + AdamW step. Two
baselines over the same number of positions: "backbone" is the bare backbone alone (random input
embeddings, a trivial loss, AdamW on its parameters): the ratio the issue targets; "text LM" adds a
token embedding and one full-vocabulary head with CE on every position. Prints one row per
strategy and precision: tokens/s (positions per second) and the ratios.

"ceiling" bounds the ratio to the bare backbone from the matrix products alone: backbone
multiply-adds per position over backbone + output-head multiply-adds (each stream's logits over
its own codebook; stream 0 over the target's range and the special tokens). The heads are work the bare backbone does not do, so with several 1024-entry
codebooks a small model cannot keep 85% of the backbone's speed however the strategy is written
(dim 256, 4 streams: ceiling ~0.75); at the 30M preset's width the heads matter less.

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
from speechlm.utils.precision import cpu_has_bf16
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


def flop_ceiling(model: SpeechLM, T: int) -> str:
    """parallel / delay: backbone MACs / (backbone + output-head MACs) per training position (see
    the docstring); "-" for the other strategies, whose extra passes are not a head."""
    if model.config.strategy not in ("parallel", "delay"):
        return "-"
    D = model.config.dim
    body = sum(m.weight.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
    body += 2 * T * D * model.config.n_layers  # attention scores and weighted values over T keys
    a, b = model.vocab.stream_range("codec", 0)
    cols = (b - a) + len(model.head.sp_ids) + sum(len(model.head.ids(k)) for k in range(1, model.n_streams))
    return f"{body / (body + D * cols):.2f}"


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
    ap.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: fp32, plus bf16 where the CPU has native bf16 (emulated bf16 is ~10x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vocab = Vocabulary()
    vocab.add_tokenizer("codec", [1024] * args.streams)
    vocab.add_tokenizer("phone", [60])
    vocab.add_task("plain_tts")
    batch = make_batch(vocab, args.streams, args.batch, args.phones, args.frames)
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    print(f"threads={args.threads} dim={args.dim} layers={args.layers} streams={args.streams} batch={args.batch} "
          f"frames={args.frames} vocab={len(vocab)} cpu_bf16={cpu_has_bf16()}")
    print("| strategy | precision | positions/step | backbone tok/s | text LM tok/s | SpeechLM tok/s "
          "| vs backbone | ceiling | vs text LM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for strategy in args.strategies:
        for prec in precisions:
            cfg = ModelConfig(strategy=strategy, dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                              **(dict(local_dim=128, local_layers=2) if strategy == "multiscale" else {}))
            torch.manual_seed(0)
            model = SpeechLM(cfg, vocab)
            with torch.no_grad():
                prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
            T = prep.kinds.shape[1]
            positions = args.batch * T
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer

            def full_step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):  # as the trainer
                    out = model(batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()

            bare = BareLM(cfg, len(vocab))
            bopt = torch.optim.AdamW(bare.parameters(), lr=1e-4, fused=True)
            ids = torch.randint(0, len(vocab), (args.batch, T + 1))

            def bare_step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    loss = bare(ids)
                bopt.zero_grad(set_to_none=True)
                loss.backward()
                bopt.step()

            body = BuiltinDecoder(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim)
            oopt = torch.optim.AdamW(body.parameters(), lr=1e-4, fused=True)
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
                  f"{positions / tf:,.0f} | {to / tf:.2f} | {flop_ceiling(model, T)} | {tb / tf:.2f} |", flush=True)


if __name__ == "__main__":
    main()
