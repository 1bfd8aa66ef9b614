"""The CPU's limit: matmul peak GFLOP/s, and the model FLOPs utilization (MFU) of the training step.

    OMP_NUM_THREADS=2 python bench/mfu.py --threads 2 [--quick] [--json rows.json]

1. matmul peak: square ``n x n`` products for n in 1024..4096 (``--sizes``), fp32 and, where the
   CPU has native bf16 (avx512_bf16 / AMX), bf16; 2 n^3 FLOPs each, the median of ``--reps``
   calls; the peak is the best size. Measured at the benchmark's thread count.
2. MFU of the full SpeechLM training step (embedding + backbone + strategy head + loss, backward,
   fused AdamW, as the trainer runs it) at the 30m preset and a ~100M shape, delay and
   multiscale: useful FLOPs per second over the matmul peak of the same precision. Useful FLOPs
   are counted analytically, not measured: 6 x (non-embedding matrix parameters) x positions for
   the backbone, plus causal attention (6 x layers x dim x T^2 per row: QK^T and AV, forward +
   backward, half the square as the mask leaves), plus the output heads (6 x dim x logit columns
   per position that carries a loss; each stream over its own codebook, stream 0 also over the
   special tokens) and, for multiscale, the local transformer (S positions per frame) with its
   projections. Embedding lookups, norms, softmax, loss and the optimizer count as overhead.
3. the bare backbone (random input embeddings, a trivial loss, AdamW on its parameters) at the same
   positions: its MFU, and the full step's throughput as a share of it (target >= 0.85 at 30m);
4. where the time goes: one profiled step of the first model per strategy, its top operators by
   self CPU time (``--profile-top``).

Timings are medians of ``--steps`` steps after a warm-up step; one table row per configuration.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from timing import median_time  # bench/, the script's own dir

from speechlm.conf import resolve_config
from speechlm.config import load_config
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.models import BuiltinDecoder, ModelConfig, SpeechLM
from speechlm.tasks import load_template
from speechlm.utils.precision import cpu_has_bf16
from speechlm.vocab import Vocabulary

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# ~100M parameters (95M with 8 codebooks of 1024): no built-in preset has this size (30m, 360m).
SHAPE_100M = dict(dim=768, n_layers=14, n_heads=12, n_kv_heads=4)
LOCAL = dict(local_dim=256, local_layers=2, local_heads=4)  # the presets' multiscale depth transformer




def matmul_peak(dtype: str, sizes: list[int], reps: int) -> dict[int, float]:
    """GFLOP/s of an ``n x n`` by ``n x n`` product per size (median of ``reps`` calls)."""
    out = {}
    for n in sizes:
        a = torch.randn(n, n).to(DTYPES[dtype])
        b = torch.randn(n, n).to(DTYPES[dtype])
        c = torch.empty(n, n, dtype=DTYPES[dtype])
        t = median_time(lambda: torch.mm(a, b, out=c), reps)
        out[n] = 2 * n**3 / t / 1e9
    return out


def model_config(size: str, strategy: str) -> ModelConfig:
    """The 30m preset (or the ~100M shape) with ``strategy``; multiscale gets the presets' local transformer."""
    mc = load_config(ModelConfig, resolve_config("model", "30m"))
    mc.strategy = strategy
    mc.cond_reduction = 1  # conditions are phones here; keep the positions identical across strategies
    if size == "100m":
        for k, v in SHAPE_100M.items():
            setattr(mc, k, v)
    for k, v in LOCAL.items():
        setattr(mc, k, v if strategy == "multiscale" else None)
    return mc


def tts_batch(vocab: Vocabulary, S: int, B: int, n_phones: int, n_frames: int, seed: int = 0):
    """TTS-shaped batch: ``n_phones`` phone conditions -> ``n_frames`` codec frames of S streams."""
    rng = np.random.default_rng(seed)
    tpl = load_template("plain_tts")
    return collate([build_example(f"u{i}", tpl, {"phones": rng.integers(0, 60, (n_phones, 1)),
                                                 "speech": rng.integers(0, 1024, (n_frames, S))}, vocab, S)
                    for i in range(B)])


def linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def backbone_flops(cfg: ModelConfig, body: torch.nn.Module, lengths: list[int]) -> float:
    """Training FLOPs of the backbone over rows of ``lengths`` positions (matrices + causal attention)."""
    P = sum(lengths)
    return 6 * linear_params(body) * P + sum(6 * cfg.n_layers * cfg.dim * t * t for t in lengths)


def step_flops(model: SpeechLM, batch) -> dict[str, float]:
    """Useful training FLOPs of one step (see the module docstring), by part."""
    cfg = model.config
    with torch.no_grad():
        prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    lengths = prep.lengths.tolist()
    S = model.n_streams
    a, b = model.vocab.stream_range("codec", 0)
    cols = (b - a) + len(model.head.sp_ids) + sum(len(model.head.ids(k)) for k in range(1, S))
    if cfg.strategy == "multiscale":
        frames = int((batch.loss_weight.sum(-1) > 0).sum())  # rows whose streams carry a loss
        d = model.depth
        dl, Ll = cfg.local_dim, cfg.local_layers
        local = 6 * frames * S * (linear_params(d.local) + 2 * cfg.dim * dl) + 6 * frames * Ll * dl * S * S
        heads = 6 * cfg.dim * cols * frames
    else:
        rows = int((prep.layout.weight.sum(-1) > 0).sum())
        local, heads = 0.0, 6 * cfg.dim * cols * rows
    return {"backbone": backbone_flops(cfg, model.backbone, lengths), "heads": float(heads),
            "local": float(local), "positions": float(sum(lengths)), "T": float(max(lengths))}


def profile_ops(step, top: int) -> list[dict]:
    """Where one step's time goes: the ``top`` operators by self CPU time (torch.profiler), with
    their share of the step, and the rest summed as "other"."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events[:top]]
    rest = sum(e.self_cpu_time_total for e in events[top:])
    rows.append({"op": "other", "calls": sum(e.count for e in events[top:]), "self_ms": rest / 1e3,
                 "share": rest / total})
    return rows


def measure_step(size: str, strategy: str, prec: str, vocab: Vocabulary, batch, steps: int,
                 with_backbone: bool, profile_top: int = 0) -> dict:
    cfg = model_config(size, strategy)
    torch.manual_seed(0)
    model = SpeechLM(cfg, vocab)
    fl = step_flops(model, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer
    auto = dict(device_type="cpu", dtype=torch.bfloat16, enabled=prec == "bf16")

    def full_step() -> None:
        with torch.autocast(**auto):  # as the trainer
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    row = {"size": size, "strategy": strategy, "precision": prec,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "backbone_params_m": linear_params(model.backbone) / 1e6,
           "positions": fl["positions"], "T": fl["T"],
           "useful_gflop": (fl["backbone"] + fl["heads"] + fl["local"]) / 1e9,
           "backbone_gflop": fl["backbone"] / 1e9, "heads_gflop": fl["heads"] / 1e9, "local_gflop": fl["local"] / 1e9}
    row["s"] = median_time(full_step, steps)
    if profile_top:
        row["profile"] = profile_ops(full_step, profile_top)
    if with_backbone:
        B, T = batch.tokens.shape[0], int(fl["T"])
        body = BuiltinDecoder(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim)
        bopt = torch.optim.AdamW(body.parameters(), lr=1e-4, fused=True)
        x = torch.randn(B, T, cfg.dim)

        def backbone_step() -> None:
            with torch.autocast(**auto):
                loss = body(x).float().pow(2).mean()
            bopt.zero_grad(set_to_none=True)
            loss.backward()
            bopt.step()

        row["backbone_s"] = median_time(backbone_step, steps)
        row["backbone_positions"] = float(B * T)
        row["bare_gflop"] = backbone_flops(cfg, body, [T] * B) / 1e9
        del body, bopt
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["30m", "100m"])
    ap.add_argument("--strategies", nargs="+", default=["delay", "multiscale"])
    ap.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="default: fp32, plus bf16 where the CPU has native bf16")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--phones", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--profile-top", type=int, default=10,
                    help="profile one step of the first model (each strategy): its top operators (0: no profile)")
    ap.add_argument("--quick", action="store_true", help="small sizes, 30m only, batch 2: a smoke run")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.reps, a.models, a.batch, a.frames, a.steps = [512, 1024], 3, ["30m"], 2, 60, 1
    torch.set_num_threads(a.threads)
    precisions = a.precisions or (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    print(f"threads={a.threads} cpu_bf16={cpu_has_bf16()} batch={a.batch} frames={a.frames} phones={a.phones} "
          f"streams={a.streams} (codebooks of 1024)")
    print("\n### Matmul peak (GFLOP/s, square n x n products)\n")
    print("| precision | " + " | ".join(f"n={n}" for n in a.sizes) + " | peak |")
    print("|---|" + "---|" * (len(a.sizes) + 1))
    peaks: dict[str, float] = {}
    peak_rows = []
    for prec in precisions:
        g = matmul_peak(prec, a.sizes, a.reps)
        peaks[prec] = max(g.values())
        peak_rows.append({"precision": prec, "gflops": {str(k): v for k, v in g.items()}, "peak": peaks[prec]})
        print(f"| {prec} | " + " | ".join(f"{v:.0f}" for v in g.values()) + f" | {peaks[prec]:.0f} |", flush=True)

    vocab = Vocabulary()
    vocab.add_tokenizer("codec", [1024] * a.streams)
    vocab.add_tokenizer("phone", [60])
    vocab.add_task("plain_tts")
    batch = tts_batch(vocab, a.streams, a.batch, a.phones, a.frames)
    print("\n### Model FLOPs utilization of the training step\n")
    print("| model | strategy | precision | params | positions | useful GFLOP/step | s/step | GFLOP/s | MFU "
          "| bare backbone MFU | vs bare backbone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in a.models:
        for prec in precisions:
            for strategy in a.strategies:
                r = measure_step(size, strategy, prec, vocab, batch, a.steps, with_backbone=strategy == a.strategies[0],
                                 profile_top=a.profile_top if size == a.models[0] and prec == precisions[0] else 0)
                r["gflops"] = r["useful_gflop"] / r["s"]
                r["mfu"] = r["gflops"] / peaks[prec]
                if "backbone_s" in r:
                    bb = {"backbone_s": r["backbone_s"], "bare_gflop": r["bare_gflop"],
                          "backbone_positions": r["backbone_positions"]}
                else:
                    r.update(bb)
                r["bare_mfu"] = r["bare_gflop"] / r["backbone_s"] / peaks[prec]
                # throughput share: positions per second of the full step over the bare backbone's
                r["vs_backbone"] = (r["positions"] / r["s"]) / (r["backbone_positions"] / r["backbone_s"])
                rows.append(r)
                print(f"| {size} | {strategy} | {prec} | {r['params_m']:.1f}M | {r['positions']:.0f} | "
                      f"{r['useful_gflop']:.0f} | {r['s']:.2f} | {r['gflops']:.0f} | {r['mfu']:.0%} | "
                      f"{r['bare_mfu']:.0%} | {r['vs_backbone']:.2f} |", flush=True)
    for r in rows:
        if r.get("profile"):
            print(f"\n### Where the step's time goes: {r['size']} {r['strategy']} {r['precision']} "
                  "(torch.profiler, self CPU time of one step)\n")
            print("| operator | calls | self ms | share |\n|---|---|---|---|")
            for p in r["profile"]:
                print(f"| {p['op']} | {p['calls']} | {p['self_ms']:.0f} | {p['share']:.0%} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": {"threads": a.threads, "cpu_bf16": cpu_has_bf16(), "batch": a.batch,
                                "frames": a.frames, "phones": a.phones, "streams": a.streams},
                       "peak": peak_rows, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
