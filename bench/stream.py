"""Streaming TTS: time to the first audio chunk and real-time factor, streamed against whole.

    OMP_NUM_THREADS=1 python -P bench/stream.py --threads 1
    python -P bench/stream.py --model-dir exp/mini/packed --frames 0     # a trained model, its own length

Without ``--model-dir`` it packs a randomly initialised model (Codec 2 at 50 frames/s, espeak-ng
phones) per strategy into a temporary model dir and loads it with ``speechlm.load``: speed does not
depend on the weights, and ``--frames`` forces every utterance to that length (min_len = max_len)
so streamed and whole decodes do the same work. ``whole s`` is ``Pipeline.tts`` (the first audio
arrives when it returns), ``first chunk s`` the wait for ``tts_stream``'s first chunk; RTF is wall
time / audio seconds (below 1: faster than real time).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

import speechlm
from speechlm.infer import DecodeConfig
from speechlm.models import ModelConfig, SpeechLM
from speechlm.tasks.template import BUILTIN_DIR
from speechlm.tokenizers import load_tokenizers
from speechlm.vocab import Vocabulary

TEXT = "please turn on the lights in the kitchen and tell me the weather for tomorrow"


def pack_random(root: Path, strategy: str, dim: int, layers: int) -> Path:
    """A model dir with a randomly initialised ``strategy`` model (Codec 2 audio, espeak-ng phones)."""
    root.mkdir(parents=True)
    (root / "tokenizers.yaml").write_text(yaml.safe_dump({"codec": {"type": "codec2"}, "phone": {"type": "g2p"}}))
    (root / "tasks").mkdir()
    shutil.copy(BUILTIN_DIR / "plain_tts.yaml", root / "tasks" / "plain_tts.yaml")
    toks = load_tokenizers(root / "tokenizers.yaml", base_dir=root)
    vocab = Vocabulary()
    for name in ("codec", "phone"):
        vocab.add_tokenizer(name, toks[name].codebook_sizes)
    vocab.add_task("plain_tts")
    torch.manual_seed(0)
    local = dict(local_dim=128, local_layers=2) if strategy == "multiscale" else {}  # refused by the others
    SpeechLM(ModelConfig(strategy=strategy, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, **local),
             vocab).save_pretrained(root)
    return root


def measure(pipe, cfg: DecodeConfig, chunk_frames: int, rounds: int) -> dict[str, float]:
    """Medians over ``rounds``: whole-utterance time, streamed first-chunk and total times, audio s."""
    whole, first, total, audio_s, chunks = [], [], [], 0.0, 0
    for _ in range(rounds):
        t = time.perf_counter()
        wav, sr = pipe.tts(TEXT, config=cfg)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        stream = pipe.tts_stream(TEXT, config=cfg, chunk_frames=chunk_frames)
        n, got = 0, 0
        for chunk in stream:
            if n == 0:
                first.append(time.perf_counter() - t)
            n, got = n + 1, got + len(chunk)
        total.append(time.perf_counter() - t)
        if got != len(wav):
            raise RuntimeError(f"streamed {got} samples, whole decode {len(wav)}")
        audio_s, chunks = len(wav) / sr, n
    med = statistics.median
    return {"whole": med(whole), "first": med(first), "total": med(total), "audio": audio_s, "chunks": chunks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", help="a packed model dir with a plain_tts task (default: random models)")
    ap.add_argument("--strategies", nargs="+", default=["delay", "parallel", "multiscale", "flat", "ar_nar"])
    ap.add_argument("--chunk-frames", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--frames", type=int, default=150, help="forced length (0: the model's own end token)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DecodeConfig(min_len=args.frames, max_len=args.frames) if args.frames else None
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            dirs = {"model": Path(args.model_dir)}
            print(f"\n### Streaming TTS: {args.model_dir} ({args.threads} thread(s))\n")
        else:
            dirs = {s: pack_random(Path(tmp) / s, s, args.dim, args.layers) for s in args.strategies}
            print(f"\n### Streaming TTS: random dim-{args.dim} {args.layers}-layer models, Codec 2 (8 streams, "
                  f"50 frames/s), {args.frames} frames, {args.threads} thread(s), median of {args.rounds}\n")
        print("| model | chunk frames | chunks | audio s | whole s | first chunk s | stream total s | "
              "RTF whole | RTF stream | first chunk / whole |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, d in dirs.items():
            pipe = speechlm.load(d)
            pipe.tts("warm up", config=DecodeConfig(min_len=4, max_len=4))
            for cf in args.chunk_frames:
                m = measure(pipe, cfg or pipe.decode_config("plain_tts"), cf, args.rounds)
                print(f"| {name} | {cf} | {m['chunks']} | {m['audio']:.2f} | {m['whole']:.3f} | {m['first']:.3f} | "
                      f"{m['total']:.3f} | {m['whole'] / m['audio']:.3f} | {m['total'] / m['audio']:.3f} | "
                      f"{m['first'] / m['whole']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
