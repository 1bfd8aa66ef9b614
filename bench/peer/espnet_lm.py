#!/usr/bin/env python3
"""ESPnet-SpeechLM's own core LMs (``espnet==202506``) at the issue's shapes: the peer rows.

Runs in the peer's virtual env (``bench/peer/venv.sh`` makes it), never in the project's:

    PEER/bin/python bench/peer/espnet_lm.py --threads 2 [--json rows.json]

Times ``MultiScaleLM`` (attention dim 256, 4 heads, 6 global + 2 local layers, 8 codebooks of a
2048-entry vocabulary): one training step (forward + backward + AdamW) on batch 8 x 256 frames
(the first 1/8 of each row is the prefix), and greedy decoding of 100 frames after a 50-frame
prompt for 1 and 8 rows (``nbest``). Every figure is the median of repeated runs after a
warm-up; decoding is forced to exactly 100 frames (``minlenratio = maxlenratio``: no early end
token; checked by counting the global decoder's calls). It also tries to build ``ValleLM`` and reports the error if that fails (it does in
202506). Standalone on purpose: it imports nothing of speechlm.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def median_time(fn, n: int, warmup: int = 1) -> float:
    """Median wall time of ``n`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--nq", type=int, default=8)
    ap.add_argument("--V", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--local-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--gen-frames", type=int, default=100)
    ap.add_argument("--prompt-frames", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="timed decodes per row count (median)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    import espnet
    from espnet2.speechlm.core_lm.abs_core_lm import SpeechLMInferenceOptions
    from espnet2.speechlm.core_lm.ar_multiscale import MultiScaleLM

    info = {"espnet": espnet.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "threads": a.threads}
    rows: list[dict] = []
    m = MultiScaleLM(a.V, a.nq, g_att_unit=a.dim, g_head=a.heads, g_layer=a.layers,
                     l_att_unit=a.dim, l_head=a.heads, l_layer=a.local_layers)
    params = sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), 1e-4)
    x = torch.randint(300, a.V, (a.B, a.T, a.nq))
    lens = torch.full((a.B,), a.T)
    pre = torch.full((a.B,), a.T // 8)

    def train_step() -> None:
        loss, _, _ = m(x, lens, prefix_len=pre)
        loss.backward()
        opt.step()
        opt.zero_grad()

    dt = median_time(train_step, a.steps)
    rows.append({"impl": "espnet-202506", "model": "MultiScaleLM", "what": "train", "rows": a.B, "frames": a.T,
                 "params_m": params / 1e6, "s": dt, "frames_per_s": a.B * a.T / dt})
    print(f"| espnet MultiScaleLM | train | {a.B} x {a.T} | {params / 1e6:.1f}M | {dt * 1000:.0f} ms | "
          f"{a.B * a.T / dt:,.0f} frames/s |", flush=True)

    m.eval()
    for nbest in a.rows:
        masks = torch.zeros(a.nq, a.V, dtype=torch.bool)
        masks[:, :300] = True  # forbid the special tokens; ESPnet re-allows eos (5) on the first code
        # minlen = maxlen: the end token is never allowed, so every run decodes exactly gen_frames frames
        # (random weights could otherwise end early and make the peer look faster than it is)
        ratio = a.gen_frames / a.prompt_frames
        opts = SpeechLMInferenceOptions(search_algo="greedy_search", nbest=nbest, top_k=1, minlenratio=ratio,
                                        maxlenratio=ratio, eos=5, start=1, masks=masks, nq=a.nq)
        prefix = torch.randint(300, a.V, (1, a.prompt_frames, a.nq))
        suffix = torch.randint(300, a.V, (1, a.gen_frames, a.nq))

        def decode() -> None:
            with torch.no_grad():
                m.inference(prefix, opts, suffix=suffix)

        calls = []
        hook = m.g_decoders.register_forward_hook(lambda *_: calls.append(1))  # prompt + one per frame
        dt = median_time(decode, a.rounds)
        hook.remove()
        steps = len(calls) // (a.rounds + 1) - 1
        if steps != a.gen_frames:
            raise RuntimeError(f"ESPnet decoded {steps} frames per run, not {a.gen_frames}")
        rows.append({"impl": "espnet-202506", "model": "MultiScaleLM", "what": "decode", "rows": nbest,
                     "frames": a.gen_frames, "params_m": params / 1e6, "s": dt,
                     "frames_per_s": nbest * a.gen_frames / dt})
        print(f"| espnet MultiScaleLM | decode | {nbest} x {a.gen_frames} | {params / 1e6:.1f}M | {dt:.2f} s | "
              f"{nbest * a.gen_frames / dt:,.0f} frames/s |", flush=True)

    # ValleLM (AR + NAR) at the same width: released broken in 202506; record what happens.
    try:
        from espnet2.speechlm.core_lm.valle import ValleLM

        ValleLM(a.V, a.nq, att_unit=a.dim, head=a.heads, ar_layer=a.layers, nar_layer=a.layers)
        info["valle"] = "builds"
    except Exception as e:  # noqa: BLE001 - the error is the result
        info["valle"] = f"fails to build: {type(e).__name__}: {e}"
    print(f"ValleLM: {info['valle']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
