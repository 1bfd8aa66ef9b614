"""Decoding speed: KV cache against recomputation, batch-size scaling for TTS- and ASR-shaped
decoding, and ours against transformers' ``generate`` on the same Llama backbone (text only).

Models are randomly initialised (speed does not depend on the weights); lengths are forced with
``min_len = max_len`` so every configuration generates the same number of steps.

    OMP_NUM_THREADS=1 python -P bench/decode.py --threads 1
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from speechlm.data.batch import Batch, collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate
from speechlm.models import ModelConfig, SpeechLM, load_llama_weights
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary


def vocab_for(streams: int) -> Vocabulary:
    v = Vocabulary()
    v.add_tokenizer("codec", [1024] * streams)
    v.add_tokenizer("phone", [60])
    v.add_tokenizer("text_bpe", [500])
    for t in ("plain_tts", "asr"):
        v.add_task(t)
    return v


def prompts_for(task: str, vocab: Vocabulary, S: int, B: int, cond: int, seed: int = 0):
    """``B`` prompts of different lengths (cond .. 1.5 * cond condition rows)."""
    rng = np.random.default_rng(seed)
    tpl = load_template(task)
    exs = []
    for i in range(B):
        n = cond + (i * cond // 2) // max(1, B)
        segs = ({"phones": rng.integers(0, 60, (n, 1)), "speech": np.zeros((1, S), int)} if task == "plain_tts"
                else {"speech": rng.integers(0, 1024, (n, S)), "text": np.zeros((1, 1), int)})
        exs.append(build_example(f"u{i}", tpl, segs, vocab, S, with_targets=False))
    return collate(exs)


def timed(fn, rounds: int = 2) -> tuple[float, object]:
    """Fastest of ``rounds`` calls: its wall time, and what ``fn`` returned then."""
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        r = fn()
        t = time.perf_counter() - t
        if t < best:
            best, out = t, r
    return best, out


def model_for(strategy: str, vocab, dim: int, layers: int, cond_reduction: int = 1) -> SpeechLM:
    torch.manual_seed(0)
    local = dict(local_dim=128, local_layers=2) if strategy == "multiscale" else {}  # refused by the others
    return SpeechLM(ModelConfig(strategy=strategy, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                cond_reduction=cond_reduction, **local), vocab).eval()


def kv_table(args) -> None:
    vocab = vocab_for(args.streams)
    print(f"\n### KV cache vs recomputation ({args.long_steps} frames, TTS prompt, batch 1, "
          f"dim {args.kv_dim}, {args.kv_layers} layers)\n")
    print("| strategy | recompute s | KV cache s | speed-up |\n|---|---|---|---|")
    for strategy in args.kv_strategies:
        model = model_for(strategy, vocab, args.kv_dim, args.kv_layers)
        p = prompts_for("plain_tts", vocab, args.streams, 1, 40)
        n = args.long_steps
        t_kv = timed(lambda: generate(model, p, DecodeConfig(min_len=n, max_len=n)), 1)[0]
        t_re = timed(lambda: generate(model, p, DecodeConfig(min_len=n, max_len=n, kv_cache=False)), 1)[0]
        print(f"| {strategy} | {t_re:.2f} | {t_kv:.2f} | {t_re / t_kv:.1f}x |", flush=True)


class PassTimer:
    """Wall time spent in decoding's whole-sequence passes (the prompt prefill, and ar_nar's NAR
    passes), patched around them for the benchmark."""

    def __init__(self) -> None:
        import importlib

        from speechlm.infer.context import DecodeContext

        nar_mod = importlib.import_module("speechlm.infer.nar")  # ar_nar's pass, looked up there at each call

        self.s = 0.0
        prefill = DecodeContext.prefill.__func__
        DecodeContext.prefill = classmethod(self._wrap(prefill))
        nar_mod.nar_fill = self._wrap(nar_mod.nar_fill)

    def _wrap(self, fn):
        def timed_pass(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s += time.perf_counter() - t
        return timed_pass


def batch_table(args) -> None:
    vocab = vocab_for(args.streams)
    N = 16
    passes = PassTimer()
    print(f"\n### Batch scaling ({N} prompts of 1-1.5x 40 phones (TTS) or 150 frames (ASR) decoded in "
          f"batches of B; {args.steps} steps per row; TTS frames at {args.frame_rate} Hz)\n")
    print("Every batch size decodes the same 16 prompts. \"passes s\" is the time in whole-sequence "
          "forward passes (the prompts' prefill and, for ar_nar, the NAR passes): compute-bound matrix "
          "products whose cost per row does not shrink with the batch on a CPU. \"steps x\" is the "
          "speed-up of the incremental steps alone; \"ceiling\" is the speed-up over batch 1 if the "
          "batch's incremental steps took no time at all (Amdahl). `+crN`: the model stacks N audio-"
          "condition rows into one (`cond_reduction: N`; with the flat pattern, N = streams gives one "
          "row per condition frame).\n")
    print("| strategy | task | batch | s | passes s | frames/s | tokens/s | RTF | x batch 1 | steps x batch 1 | ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.strategies:
        strategy, _, cr = name.partition("+cr")
        model = model_for(strategy, vocab, args.dim, args.layers, int(cr or 1))
        for task in ("plain_tts", "asr") if not cr else ("asr",):
            cond = 40 if task == "plain_tts" else 150
            rows = prompts_for(task, vocab, args.streams, N, cond)
            base = None
            for B in (1, 4, 16):
                chunks = [_rows(rows, list(range(i, i + B))) for i in range(0, N, B)]
                n = args.steps

                def run() -> float:
                    passes.s = 0.0
                    for p in chunks:
                        generate(model, p, DecodeConfig(min_len=n, max_len=n))
                    return passes.s

                t, t_pass = timed(run, args.rounds)
                frames = N * n
                streams = args.streams if task == "plain_tts" else 1
                fps = frames / t
                base = base or (fps, t, t - t_pass)
                rtf = t / (frames / args.frame_rate) if task == "plain_tts" else float("nan")
                print(f"| {name} | {task} | {B} | {t:.2f} | {t_pass:.2f} | {fps:,.0f} | {fps * streams:,.0f} | "
                      f"{rtf:.3f} | {fps / base[0]:.1f}x | {base[2] / max(t - t_pass, 1e-3):.1f}x | "
                      f"{base[1] / t_pass:.1f}x |", flush=True)


def _rows(batch, idx: list[int]):
    """Rows ``idx`` of a collated prompt batch, trimmed to their longest prompt."""
    sel = torch.tensor(idx)
    T = int(batch.lengths[sel].max())
    return Batch([batch.ids[i] for i in idx], [batch.tasks[i] for i in idx], batch.tokens[sel, :T],
                 batch.loss_weight[sel, :T], batch.kinds[sel, :T], batch.lengths[sel], batch.prefix_lens[sel])


def hf_table(args) -> None:
    import transformers

    print(f"\n### Text-only decoding: ours vs transformers generate (same Llama, {args.steps} new tokens)\n")
    cfg = transformers.LlamaConfig(vocab_size=args.hf_vocab, hidden_size=args.dim, intermediate_size=4 * args.dim,
                                   num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                                   tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    vocab = Vocabulary()
    vocab.add_tokenizer("llm", [args.hf_vocab])
    vocab.add_task("mt")
    tpl = load_template("mt").__class__(**{**load_template("mt").__dict__})
    for seg in tpl.conditions + tpl.targets:
        seg.tokenizer = "llm"
    n = args.steps
    print("| implementation | batch | s | tokens/s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        lm.save_pretrained(d)
        ours_hf = SpeechLM(ModelConfig(strategy="parallel", backbone="hf", hf_path=d, hf_text_tokenizer="llm"), vocab).eval()
        ours_bi = SpeechLM(ModelConfig(strategy="parallel", dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                                       ffn_dim=4 * args.dim, norm_eps=cfg.rms_norm_eps,
                                       rope_theta=float(cfg.rope_parameters["rope_theta"])), vocab).eval()
        load_llama_weights(ours_bi.backbone, lm)
        ours_bi.embed.weight.data.copy_(ours_hf.embed.weight.data)
        for B in (1, 8):
            rng = np.random.default_rng(B)
            src = rng.integers(10, args.hf_vocab, (B, 24))
            exs = [build_example(f"u{i}", tpl, {"src": src[i, :, None], "tgt": np.zeros((1, 1), int)}, vocab, 1,
                                 with_targets=False) for i in range(B)]
            prompts = collate(exs)  # 27 positions: <task> <seg> 24 tokens <seg>
            ids = torch.from_numpy(rng.integers(10, args.hf_vocab, (B, 27)))  # same prompt length for HF

            def run_hf():
                lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0, eos_token_id=None)

            outs: dict = {}
            runs = {"transformers generate": run_hf}
            for name, model in (("ours, hf backbone", ours_hf), ("ours, builtin backbone", ours_bi)):
                runs[name] = (lambda name=name, model=model: outs.__setitem__(
                    name, generate(model, prompts, DecodeConfig(min_len=n, max_len=n))))
            best = {name: float("inf") for name in runs}
            for _ in range(args.rounds):  # interleaved, so that every contender sees the same load
                for name, fn in runs.items():
                    best[name] = min(best[name], timed(fn, 1)[0])
            for name, t in best.items():
                print(f"| {name} | {B} | {t:.2f} | {B * n / t:,.0f} |", flush=True)
            same = all(np.array_equal(a, b) for a, b in zip(*outs.values()))
            print(f"|  (builtin and hf backbones emit the same tokens: {same}) | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--long-steps", type=int, default=300)
    ap.add_argument("--frame-rate", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=2, help="timings are the fastest of this many runs")
    ap.add_argument("--kv-dim", type=int, default=384)
    ap.add_argument("--kv-layers", type=int, default=6)
    ap.add_argument("--kv-strategies", nargs="+", default=["parallel", "delay", "multiscale", "ar_nar"],
                    help="flat needs streams x more steps; add it explicitly (slow to recompute)")
    ap.add_argument("--hf-vocab", type=int, default=8000)
    ap.add_argument("--strategies", nargs="+", default=["parallel", "delay", "flat", "flat+cr4", "multiscale", "ar_nar"],
                    help="batch table; NAME+crN: with cond_reduction N (ASR only)")
    ap.add_argument("--tables", nargs="+", default=["kv", "batch", "hf"], choices=["kv", "batch", "hf"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} dim={args.dim} layers={args.layers} streams={args.streams}")
    if "kv" in args.tables:
        kv_table(args)
    if "batch" in args.tables:
        batch_table(args)
    if "hf" in args.tables:
        hf_table(args)


if __name__ == "__main__":
    main()
