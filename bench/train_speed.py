"""Training throughput on this machine: tokens/s per precision (and thread count, and frozen layers).

    python bench/train_speed.py [--model-config 30m] [--steps 6] [--threads 1 2] [--freeze-layers 0 2 4]

Trains on a synthetic ASR+TTS corpus through the real Trainer (one process) and prints
non-padding positions per second after a warm-up step, for fp32 and, where the CPU has native
bf16 (avx512_bf16 / AMX), bf16 autocast; on a GPU, for fp32 / bf16 / fp16.
"""
from __future__ import annotations



import argparse
import json
import logging
import tempfile
import time
from pathlib import Path


def run(root: Path, model_config: str, precision: str, threads: int, steps: int, batch_tokens: int,
        freeze: int = 0) -> float:
    import torch

    from speechlm.conf import resolve_config
    from speechlm.config import load_config
    from speechlm.data.dataset import DataSpec
    from speechlm.data.synthetic import synthetic_vocab
    from speechlm.models import ModelConfig
    from speechlm.train.config import load_train_config
    from speechlm.train.trainer import Trainer

    cfg = load_train_config(None, {"max_steps": steps + 1, "batch_tokens": batch_tokens, "precision": precision,
                                   "threads": threads, "valid_every": 0, "save_every": 0, "progress_bar": False,
                                   "tensorboard": False, "plot": False, "warmup_steps": 1, "pool_size": 500})
    mc = load_config(ModelConfig, resolve_config("model", model_config))
    mc.freeze_layers = freeze
    tr = Trainer(cfg, mc, synthetic_vocab(["asr", "tts"]),
                 [DataSpec.parse(f"asr:s:{root / 'asr'}"), DataSpec.parse(f"tts:s:{root / 'tts'}")],
                 str(root / f"exp_{precision}_{threads}_{freeze}")).setup()
    from speechlm.data.loader import train_batches

    it = iter(train_batches(tr.train_data, tr.sampler, 0, 0, 1))
    tr.train_step([next(it)])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, tok0 = time.perf_counter(), tr.tokens
    for _ in range(steps):
        tr.train_step([next(it)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (tr.tokens - tok0) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="tiny", help="model YAML or built-in preset name")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batch-tokens", type=int, default=4000)
    p.add_argument("--freeze-layers", type=int, nargs="+", default=[0],
                   help="model.freeze_layers values (the first N backbone layers get no gradient)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from speechlm.data.synthetic import make_dump
    from speechlm.utils.precision import cpu_has_bf16

    gpu = torch.cuda.is_available()
    precisions = ["fp32", "bf16", "fp16"] if gpu else ["fp32"] + (["bf16"] if cpu_has_bf16() else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dump(root / "asr", "asr", 400, seed=0, frames=(50, 300), text_len=(5, 60))
        make_dump(root / "tts", "tts", 400, seed=1, frames=(50, 300), text_len=(5, 60), prefix="t")
        print(f"model {args.model_config}, {args.steps} steps of {args.batch_tokens} tokens, "
              f"device {'cuda' if gpu else 'cpu'}")
        print(f"{'precision':>9} {'threads':>7} {'frozen':>6} {'tokens/s':>9}")
        base = None
        rows = []
        for threads in args.threads:
            for prec in precisions:
                for freeze in args.freeze_layers:
                    rate = run(root, args.model_config, prec, threads, args.steps, args.batch_tokens, freeze)
                    base = base or rate
                    print(f"{prec:>9} {threads:>7} {freeze:>6} {rate:>9.0f}  ({rate / base:.2f}x)")
                    rows.append({"model": args.model_config, "precision": prec, "threads": threads,
                                 "freeze_layers": freeze, "tokens_per_s": rate, "vs_first": rate / base})
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
