"""GPU model and decoding benchmark: the 360M preset in bf16 with SDPA flash attention.

    python bench/gpu_model.py [--device cuda] [--model 360m] [--json rows.json]

1. bf16 matmul peak of the device (square products, the best of ``--sizes``);
2. training step (forward + backward + fused AdamW, bf16 autocast, as the trainer) of the model on
   a TTS-shaped batch, delay and multiscale: tokens/s (positions per second) and MFU (useful FLOPs
   counted as in ``bench/mfu.py``, over the bf16 matmul peak just measured);
3. greedy decoding of ``--decode-frames`` frames for 1 and ``--decode-rows`` rows: frames/s.

Attention runs through ``F.scaled_dot_product_attention`` restricted to the flash kernel
(``torch.nn.attention.sdpa_kernel``): the model is causal (``prefix_lm: false``) and rows are not
padded, so no mask is passed and flash applies; a step that needs another kernel fails loudly
instead of falling back. ``--device cpu`` with a small ``--model`` checks the script on a laptop
(no flash restriction there).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np
import torch

from mfu import LOCAL, step_flops, tts_batch  # bench/mfu.py: the FLOP count and the batch

from speechlm.conf import resolve_config
from speechlm.config import load_config
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate
from speechlm.models import ModelConfig, SpeechLM
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, n: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def flash_only(device: torch.device):
    """SDPA limited to the flash kernel on CUDA (a no-op elsewhere)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def prompt_batch(vocab: Vocabulary, S: int, R: int, n_phones: int):
    """``R`` copies of one TTS prompt of ``n_phones`` phones (no targets: decoding's input)."""
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 60, (n_phones, 1))
    tpl = load_template("plain_tts")
    return collate([build_example(f"u{i}", tpl, {"phones": phones, "speech": np.zeros((1, S), int)}, vocab, S,
                                  with_targets=False) for i in range(R)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="360m", help="model preset name or YAML")
    ap.add_argument("--strategies", nargs="+", default=["delay", "multiscale"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--phones", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--decode-frames", type=int, default=200)
    ap.add_argument("--decode-rows", type=int, default=32)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16
    peaks = {}
    for n in a.sizes:
        x = torch.randn(n, n, device=dev, dtype=dtype)
        y = torch.randn(n, n, device=dev, dtype=dtype)
        t = median_time(lambda: x @ y, 10, dev)
        peaks[n] = 2 * n**3 / t / 1e9
    peak = max(peaks.values())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; bf16 matmul GFLOP/s: "
          + ", ".join(f"n={n}: {g:,.0f}" for n, g in peaks.items()) + f"; peak {peak:,.0f}")

    vocab = Vocabulary()
    vocab.add_tokenizer("codec", [1024] * a.streams)
    vocab.add_tokenizer("phone", [60])
    vocab.add_task("plain_tts")
    cpu_batch = tts_batch(vocab, a.streams, a.batch, a.phones, a.frames)
    batch = cpu_batch.to(dev)
    rows = []
    print("| model | strategy | params | positions/step | s/step | tokens/s | useful TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for strategy in a.strategies:
        mc = load_config(ModelConfig, resolve_config("model", a.model))
        mc.strategy, mc.prefix_lm, mc.cond_reduction = strategy, False, 1
        for k, v in LOCAL.items():
            setattr(mc, k, v if strategy == "multiscale" else None)
        torch.manual_seed(0)
        model = SpeechLM(mc, vocab).to(dev)
        if a.activation_checkpointing:
            model.backbone.set_activation_checkpointing(True)
        fl = step_flops(model.cpu(), cpu_batch)
        model.to(dev)
        useful = fl["backbone"] + fl["heads"] + fl["local"]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step() -> None:
            with flash_only(dev), torch.autocast(dev.type, dtype=dtype):
                out = model(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        s = median_time(step, a.steps, dev)
        r = {"model": a.model, "strategy": strategy, "params_m": model.num_parameters() / 1e6,
             "positions": fl["positions"], "s": s, "tokens_per_s": fl["positions"] / s,
             "useful_tflops": useful / s / 1e12, "mfu": useful / s / 1e9 / peak, "peak_gflops": peak}
        rows.append(r)
        print(f"| {a.model} | {strategy} | {r['params_m']:.0f}M | {fl['positions']:.0f} | {s:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['useful_tflops']:.1f} | {r['mfu']:.0%} |", flush=True)
        opt = None  # free the optimizer state before decoding
        model.eval()
        for R in (1, a.decode_rows):
            prompts = prompt_batch(vocab, a.streams, R, a.phones).to(dev)
            cfg = DecodeConfig(min_len=a.decode_frames, max_len=a.decode_frames, precision="bf16")

            def run() -> None:
                with flash_only(dev):
                    generate(model, prompts, cfg)

            d = median_time(run, 2, dev)
            rows.append({"model": a.model, "strategy": strategy, "decode_rows": R, "s": d,
                         "frames_per_s": R * a.decode_frames / d})
            print(f"| {a.model} | {strategy} decode x{R} | | {a.decode_frames} frames | {d:.2f} | "
                  f"{R * a.decode_frames / d:,.0f} frames/s | | |", flush=True)
        model = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "peak_gflops": peaks, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
