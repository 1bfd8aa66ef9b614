"""The multiscale strategy's speed at ESPnet-SpeechLM's MultiScaleLM shapes, and where its time goes.

Shapes and inputs are those of ``bench/peer/ours_lm.py`` (its builders are reused, so the rows sit
next to the peer's in the report): width 256, 4 heads, 6 global + 2 local layers (the local
transformer as wide as the global one), 8 codebooks x 256 entries, fp32.

- train: forward + backward + AdamW on 8 rows x 256 frames; frames/s = 8 x 256 / step time (the
  median of ``--steps`` steps after a warm-up). With it, the step's multiply-adds by part (ours,
  and ESPnet's MultiScaleLM at the same shapes: 4x GELU MLPs and a 2048-column head over every
  local position): at the same matmul rate the training ratio is the ratio of these counts.
- decode: greedy decoding of exactly 100 frames after a 50-frame prompt, 1 and 8 rows (8 copies
  of the prompt, as the peer's nbest 8), prefill included; frames/s over all rows (median).
- profile (``--profile``): per generated frame, the wall time and the number of aten kernels by
  part of the decoding loop: the global step, the S local (depth) steps, the token choice (logits,
  masks, argmax), the step input, the rest (Python bookkeeping), from torch.profiler at 1 row.

    python bench/multiscale.py --threads 2 --json multiscale.json
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peer"))
from timing import median_time  # bench/, the script's own dir
from ours_lm import (  # the peer comparison's shapes and inputs
    examples,
    peer_model,
    peer_vocab,
)

from speechlm.infer import DecodeConfig, generate
from speechlm.models import ModelConfig, SpeechLM
from speechlm.models.builtin import default_ffn_dim




def train_macs(a, frames_with_loss: int, ours: bool, local_dim: int = 0) -> dict[str, float]:
    """Forward multiply-adds of one training step by part (backward: about twice more).
    ``ours``: SwiGLU MLPs, per-stream codebook heads, the local pass over frames with a loss only;
    else ESPnet's MultiScaleLM (``espnet2/speechlm/core_lm/ar_multiscale.py``): 4x GELU MLPs, the
    local pass over every frame, a full-vocabulary head at every local position."""
    D, B, T, S, V = a.dim, a.B, a.T, a.nq, a.nq * a.codebook
    mlp = 3 * D * default_ffn_dim(D) if ours else 2 * D * 4 * D
    layer = 4 * D * D + mlp

    def attn(t: int) -> int:  # scores and weighted values of one position over t keys
        return 2 * t * D

    frames = frames_with_loss if ours else B * (T - 1)
    Dl = local_dim or D
    llayer = 4 * Dl * Dl + (3 * Dl * default_ffn_dim(Dl) if ours else 8 * Dl * Dl)
    proj = 2 * D * Dl if ours else 0  # ours: in/tok and out projections around the local layers
    glob = B * T * (a.layers * layer) + B * a.layers * attn(T) * T / 2
    local = frames * S * (a.local_layers * llayer + proj) + frames * a.local_layers * 2 * S * Dl * S / 2
    head = frames * S * D * (a.codebook if ours else V)
    return {"global": glob, "local": local, "head": head, "total": glob + local + head}


def decode_profile(model, prompts, n: int) -> dict[str, dict[str, float]]:
    """Wall ms and aten kernels per generated frame, by part of the decoding loop."""
    from torch.profiler import profile, record_function

    gen_mod = importlib.import_module("speechlm.infer.generate")
    ctx_mod = importlib.import_module("speechlm.infer.context")
    parts = {"global step": (ctx_mod.DecodeContext, "step"), "local steps": (type(model), "depth_step"),
             "token choice": (gen_mod.Chooser, "__call__"), "step input": (type(model), "step_input")}
    saved = {}
    for label, (owner, name) in parts.items():
        fn = getattr(owner, name)
        saved[label] = fn

        def wrapped(*args, _fn=fn, _label=label, **kw):
            with record_function(_label):
                return _fn(*args, **kw)

        setattr(owner, name, wrapped)
    cfg = DecodeConfig(min_len=n, max_len=n)
    try:
        generate(model, prompts, cfg)
        with profile() as prof, record_function("all"):
            generate(model, prompts, cfg)
    finally:
        for label, (owner, name) in parts.items():
            setattr(owner, name, saved[label])
    events = prof.events()
    spans = [(e.time_range.start, e.time_range.end, e.name) for e in events if e.name in parts or e.name == "all"]
    ms, ops = collections.Counter(), collections.Counter()
    for s0, s1, name in spans:
        ms[name] += (s1 - s0) / 1e3
    for e in events:
        if e.name.startswith("aten::"):
            for s0, s1, name in spans:
                if name != "all" and s0 <= e.time_range.start and e.time_range.end <= s1:
                    ops[name] += 1
                    break
            else:
                ops["rest"] += 1
    ms["rest"] = ms["all"] - sum(ms[p] for p in parts)
    return {p: {"ms_per_frame": ms[p] / n, "kernels_per_frame": ops[p] / n} for p in [*parts, "rest"]} | {
        "all": {"ms_per_frame": ms["all"] / n, "kernels_per_frame": sum(ops.values()) / n}}


def build(strategy: str, vocab, a) -> SpeechLM:
    """The peer comparison's model (``ours_lm.peer_model``), or a narrower local transformer."""
    if strategy != "multiscale" or not a.local_dim or a.local_dim == a.dim:
        return peer_model(strategy, vocab, a.dim, a.heads, a.layers, a.local_layers)
    torch.manual_seed(0)  # the peer requires the global width; ours defaults to 128
    return SpeechLM(ModelConfig(strategy="multiscale", dim=a.dim, n_layers=a.layers, n_heads=a.heads,
                                local_dim=a.local_dim, local_layers=a.local_layers, local_heads=a.heads), vocab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", "--batch", dest="B", type=int, default=8, help="training rows")
    ap.add_argument("--T", type=int, default=256, help="frames per training row")
    ap.add_argument("--nq", type=int, default=8)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--local-layers", type=int, default=2)
    ap.add_argument("--local-dim", type=int, default=0,
                    help="local transformer width (0: the global width, as the peer's; ours defaults to 128)")
    ap.add_argument("--strategies", nargs="+", default=["multiscale", "delay", "parallel"],
                    help="training rows; the decoding rows and the profile are multiscale's")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--gen-frames", "--decode-frames", dest="gen_frames", type=int, default=100)
    ap.add_argument("--prompt-frames", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timed decodes per row count (median)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--profile", action="store_true", help="also the per-frame decoding profile (1 row)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vocab = peer_vocab(a.nq, a.codebook)
    local_dim = a.local_dim or a.dim
    out: dict = {"bench": "multiscale", "threads": a.threads, "torch": torch.__version__,
                 "config": {k: v for k, v in vars(a).items() if k != "json"}, "rows": []}
    print(f"threads={a.threads} width={a.dim} heads={a.heads} layers={a.layers} (multiscale: +{a.local_layers} local, "
          f"width {local_dim}) codebooks={a.nq}x{a.codebook} fp32\n")
    print("| strategy | measure | rows x frames | params | time | frames/s |\n|---|---|---|---|---|---|")

    def row(strategy: str, measure: str, rows: int, frames: int, params: int, dt: float) -> None:
        fps = rows * frames / dt
        out["rows"].append({"strategy": strategy, "measure": measure, "rows": rows, "frames": frames, "s": dt,
                            "frames_per_s": fps, "params": params,
                            # the keys of bench/peer/ours_lm.py's rows too
                            "impl": "speechlm", "model": strategy, "what": "train" if measure == "train" else "decode"})
        t = f"{dt * 1e3:.0f} ms" if measure == "train" else f"{dt:.2f} s"
        print(f"| {strategy} | {measure} | {rows} x {frames} | {params / 1e6:.1f}M | {t} | {fps:,.0f} |", flush=True)

    batch = examples(vocab, a.nq, a.codebook, a.B, a.T // 8, a.T - a.T // 8, True)
    for strategy in a.strategies if not a.no_train else []:
        model = build(strategy, vocab, a).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer

        def train_step(model=model, opt=opt) -> None:
            loss = model(batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        row(strategy, "train", a.B, a.T, model.num_parameters(), median_time(train_step, a.steps))
        if strategy == "multiscale":
            with torch.no_grad():
                prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
                w = model.targets(prep)[1]
            out["train_macs"] = {"speechlm": train_macs(a, int((w.sum(-1) > 0).sum()), True, local_dim),
                                 "espnet": train_macs(a, 0, False)}
    model = build("multiscale", vocab, a).eval()
    n = a.gen_frames
    for R in a.rows:
        prompts = examples(vocab, a.nq, a.codebook, R, a.prompt_frames, 0, False, same=True)
        dt = median_time(lambda p=prompts: generate(model, p, DecodeConfig(min_len=n, max_len=n)), a.rounds)
        row("multiscale", "greedy decode", R, n, model.num_parameters(), dt)
    if "train_macs" in out:
        print("\nForward multiply-adds of one multiscale training step (G = 1e9; backward about 2x more):\n")
        print("| model | global | local | heads | total |\n|---|---|---|---|---|")
        for name, m in out["train_macs"].items():
            print(f"| {name} | {m['global'] / 1e9:.1f} G | {m['local'] / 1e9:.1f} G | {m['head'] / 1e9:.1f} G | "
                  f"{m['total'] / 1e9:.1f} G |")
        r = out["train_macs"]["espnet"]["total"] / out["train_macs"]["speechlm"]["total"]
        print(f"\nAt the same matmul rate our multiscale training step would be {r:.2f}x the peer's frames/s.")
    if a.profile:
        prompts = examples(vocab, a.nq, a.codebook, 1, a.prompt_frames, 0, False, same=True)
        prof = decode_profile(model, prompts, min(n, 30))
        out["decode_profile"] = prof
        print("\nMultiscale decoding, 1 row, per generated frame (torch.profiler, whose own overhead inflates "
              "the times):\n")
        print("| part | ms | aten kernels |\n|---|---|---|")
        for part, v in prof.items():
            print(f"| {part} | {v['ms_per_frame']:.2f} | {v['kernels_per_frame']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
