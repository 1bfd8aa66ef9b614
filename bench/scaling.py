"""Scaling curves: how training and decoding cost grow with sequence length, batch size, number
of streams and processes; one PNG per curve in ``--out-dir`` (default docs/).

    OMP_NUM_THREADS=2 python bench/scaling.py --threads 2 [--quick] [--json rows.json] [--out-dir docs]

A small model (dim 256, 4 layers, codebooks of 1024), TTS-shaped rows (40 phones -> N frames of S
streams), random weights, lengths forced when decoding (``min_len = max_len``):

- sequence length: training step (forward + backward + AdamW) and decoding time per frame vs frames;
- batch size: training frames/s and decoding frames/s vs rows;
- streams: training and decoding frames/s vs codebooks per frame (delay and multiscale);
- processes: the same global batch trained by 1 process (threads = all) and by 2 gloo ranks under
  ``torchrun --nproc_per_node 2`` (DDP, one thread each, the project's ``init_distributed``).

Every point is the median of repeated runs after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_time  # bench/, the script's own dir

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate
from speechlm.models import ModelConfig, SpeechLM
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary

PHONES = 40




def vocab_for(S: int) -> Vocabulary:
    v = Vocabulary()
    v.add_tokenizer("codec", [1024] * S)
    v.add_tokenizer("phone", [60])
    v.add_task("plain_tts")
    return v


def rows_for(vocab: Vocabulary, S: int, B: int, frames: int, with_targets: bool = True):
    rng = np.random.default_rng(0)
    tpl = load_template("plain_tts")
    return collate([build_example(f"u{i}", tpl, {"phones": rng.integers(0, 60, (PHONES, 1)),
                                                 "speech": rng.integers(0, 1024, (frames if with_targets else 1, S))},
                                  vocab, S, with_targets=with_targets) for i in range(B)])


def model_for(strategy: str, vocab: Vocabulary, dim: int, layers: int) -> SpeechLM:
    torch.manual_seed(0)
    extra = dict(local_dim=128, local_layers=2) if strategy == "multiscale" else {}
    return SpeechLM(ModelConfig(strategy=strategy, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, **extra), vocab)


def train_s(model: SpeechLM, batch, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return median_time(step, steps)


def decode_s(model: SpeechLM, prompts, frames: int, rounds: int) -> float:
    model.eval()
    try:
        return median_time(lambda: generate(model, prompts, DecodeConfig(min_len=frames, max_len=frames)), rounds)
    finally:
        model.train()


def curve_seq(a, out: list) -> None:
    S = a.streams
    vocab = vocab_for(S)
    for strategy in a.strategies:
        model = model_for(strategy, vocab, a.dim, a.layers)
        for n in a.seq_lens:
            t = train_s(model, rows_for(vocab, S, a.batch, n), a.steps)
            out.append({"curve": "seq_len", "strategy": strategy, "x": n, "what": "train", "s": t,
                        "frames_per_s": a.batch * n / t})
            d = decode_s(model, rows_for(vocab, S, 1, n, False), n, a.rounds)
            out.append({"curve": "seq_len", "strategy": strategy, "x": n, "what": "decode", "s": d,
                        "frames_per_s": n / d, "ms_per_frame": 1000 * d / n})
            print(f"| seq_len | {strategy} | {n} | train {t:.3f} s ({a.batch * n / t:,.0f} frames/s) | "
                  f"decode {1000 * d / n:.1f} ms/frame |", flush=True)


def curve_batch(a, out: list) -> None:
    S = a.streams
    vocab = vocab_for(S)
    n = a.frames
    for strategy in a.strategies:
        model = model_for(strategy, vocab, a.dim, a.layers)
        for B in a.batches:
            t = train_s(model, rows_for(vocab, S, B, n), a.steps)
            d = decode_s(model, rows_for(vocab, S, B, n, False), a.decode_frames, a.rounds)
            out.append({"curve": "batch", "strategy": strategy, "x": B, "what": "train", "s": t,
                        "frames_per_s": B * n / t})
            out.append({"curve": "batch", "strategy": strategy, "x": B, "what": "decode", "s": d,
                        "frames_per_s": B * a.decode_frames / d})
            print(f"| batch | {strategy} | {B} | train {B * n / t:,.0f} frames/s | "
                  f"decode {B * a.decode_frames / d:,.0f} frames/s |", flush=True)


def curve_streams(a, out: list) -> None:
    n = a.frames
    for S in a.stream_counts:
        vocab = vocab_for(S)
        for strategy in a.strategies:
            model = model_for(strategy, vocab, a.dim, a.layers)
            t = train_s(model, rows_for(vocab, S, a.batch, n), a.steps)
            d = decode_s(model, rows_for(vocab, S, 1, n, False), a.decode_frames, a.rounds)
            out.append({"curve": "streams", "strategy": strategy, "x": S, "what": "train", "s": t,
                        "frames_per_s": a.batch * n / t})
            out.append({"curve": "streams", "strategy": strategy, "x": S, "what": "decode", "s": d,
                        "frames_per_s": a.decode_frames / d})
            print(f"| streams | {strategy} | {S} | train {a.batch * n / t:,.0f} frames/s | "
                  f"decode {a.decode_frames / d:,.0f} frames/s |", flush=True)


def ddp_worker(a) -> None:
    """One rank of the processes curve (under torchrun): DDP training steps on this rank's share."""
    import torch.distributed as dist

    from speechlm.train.distributed import init_distributed

    env = init_distributed("cpu", threads=a.threads)
    vocab = vocab_for(a.streams)
    model = model_for(a.strategies[0], vocab, a.dim, a.layers)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = rows_for(vocab, a.streams, a.batch // env.world_size, a.frames)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        out = ddp(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for _ in range(1):
        step()
    ts = []
    for _ in range(a.steps):
        dist.barrier()
        t = time.perf_counter()
        step()
        dist.barrier()
        ts.append(time.perf_counter() - t)
    if env.rank == 0:
        Path(a.json).write_text(json.dumps({"world": env.world_size, "s": statistics.median(ts)}))
    dist.destroy_process_group()


def curve_processes(a, out: list) -> None:
    """1 process with all threads, 1 process with 1 thread, and 2 gloo ranks of 1 thread; same global batch."""
    strategy = a.strategies[0]
    vocab = vocab_for(a.streams)
    model = model_for(strategy, vocab, a.dim, a.layers)
    batch = rows_for(vocab, a.streams, a.batch, a.frames)
    for threads in sorted({1, a.threads}):
        torch.set_num_threads(threads)
        t = train_s(model, batch, a.steps)
        out.append({"curve": "processes", "strategy": strategy, "x": 1, "threads": threads, "what": "train",
                    "s": t, "frames_per_s": a.batch * a.frames / t})
        print(f"| processes | {strategy} | 1 x {threads} thread(s) | train {a.batch * a.frames / t:,.0f} frames/s |",
              flush=True)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        res = Path(d) / "ddp.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--ddp-worker", "--threads", "1", "--json", str(res), "--strategies", strategy,
               "--dim", str(a.dim), "--layers", str(a.layers), "--streams", str(a.streams),
               "--batch", str(a.batch), "--frames", str(a.frames), "--steps", str(a.steps)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if p.returncode != 0 or not res.exists():
            print(f"| processes | {strategy} | 2 gloo ranks | failed: {p.stderr[-500:]!r} |")
            out.append({"curve": "processes", "strategy": strategy, "x": 2, "what": "train", "error": p.stderr[-500:]})
            return
        t = json.loads(res.read_text())["s"]
    out.append({"curve": "processes", "strategy": strategy, "x": 2, "threads": 1, "what": "train", "s": t,
                "frames_per_s": a.batch * a.frames / t})
    print(f"| processes | {strategy} | 2 gloo ranks x 1 thread | train {a.batch * a.frames / t:,.0f} frames/s |",
          flush=True)


def plot(rows: list[dict], out_dir: Path) -> list[str]:
    """One PNG per curve: frames/s (training and decoding) against the curve's variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"seq_len": "frames per row", "batch": "rows per batch", "streams": "streams (codebooks)",
             "processes": "processes (same global batch)"}
    written = []
    for curve, xlabel in names.items():
        rs = [r for r in rows if r["curve"] == curve and "frames_per_s" in r]
        if not rs:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        if curve == "processes":  # three set-ups on the same cores: bars
            labels = [f"{r['x']} proc x {r.get('threads', 1)} thr" if r["x"] == 1 else f"{r['x']} gloo ranks x 1 thr"
                      for r in rs]
            ax.bar(labels, [r["frames_per_s"] for r in rs], color="tab:blue")
            ax.set_ylabel("training frames/s")
            ax.set_title(f"scaling: {xlabel} ({rs[0]['strategy']})")
            ax.grid(alpha=0.3, axis="y")
            fig.tight_layout()
            path = out_dir / f"scaling_{curve}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(str(path))
            continue
        for strategy in sorted({r["strategy"] for r in rs}):
            for what, style in (("train", "-o"), ("decode", "--s")):
                pts = sorted((r["x"], r["frames_per_s"]) for r in rs if r["strategy"] == strategy and r["what"] == what)
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{strategy} {what}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("frames/s")
        xs = sorted({r["x"] for r in rs})
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(f"scaling: {xlabel}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"scaling_{curve}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150, help="training frames per row (batch, streams, processes)")
    ap.add_argument("--decode-frames", type=int, default=50)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--stream-counts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--strategies", nargs="+", default=["delay", "multiscale"])
    ap.add_argument("--curves", nargs="+", default=["seq_len", "batch", "streams", "processes"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="two points per curve, small shapes")
    ap.add_argument("--out-dir", default="docs", help="where the PNGs go ('' : none)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ddp_worker:
        return ddp_worker(a)
    if a.quick:
        a.seq_lens, a.batches, a.stream_counts = [32, 64], [1, 4], [1, 4]
        a.frames, a.decode_frames, a.batch, a.steps, a.rounds = 40, 10, 4, 1, 1
    torch.set_num_threads(a.threads)
    print(f"threads={a.threads} dim={a.dim} layers={a.layers} streams={a.streams} batch={a.batch} frames={a.frames}")
    print("| curve | strategy | x | result |\n|---|---|---|---|")
    rows: list[dict] = []
    for c in a.curves:
        {"seq_len": curve_seq, "batch": curve_batch, "streams": curve_streams, "processes": curve_processes}[c](a, rows)
    pngs = plot(rows, Path(a.out_dir)) if a.out_dir else []
    for p in pngs:
        print(f"wrote {p}")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": {"threads": a.threads, "dim": a.dim, "layers": a.layers,
                                                     "streams": a.streams, "batch": a.batch, "frames": a.frames,
                                                     "decode_frames": a.decode_frames},
                                            "rows": rows, "pngs": pngs}, indent=1))


if __name__ == "__main__":
    main()
