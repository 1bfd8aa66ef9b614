"""Synthetic token dumps for tests and benchmarks: real files in the real formats, random ids.

    vocab = synthetic_vocab(["asr", "tts"])
    make_dump("tmp/dump/asr", "asr", n=200, seed=0)    # manifest.jsonl, template.yaml, tokens/*

Segment lengths are drawn per utterance (audio ~ ``frames`` range, text ~ ``text_len`` range),
with text length correlated to audio length as in real speech.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary

#: tokenizer name -> codebook sizes used by the synthetic vocabulary
TOKENIZERS = {"codec": [64, 64, 64, 64], "text_bpe": [50], "phone": [40]}


def synthetic_vocab(tasks: list[str], tokenizers: dict[str, list[int]] | None = None) -> Vocabulary:
    v = Vocabulary()
    for name, sizes in (tokenizers or TOKENIZERS).items():
        v.add_tokenizer(name, sizes)
    for t in tasks:
        v.add_task(t)
    return v


def make_dump(out_dir: str | os.PathLike, task: str, n: int, seed: int = 0, frames: tuple[int, int] = (20, 120),
              text_len: tuple[int, int] = (4, 30), n_speakers: int = 5, prefix: str = "utt",
              tokenizers: dict[str, list[int]] | None = None, write_tokens: bool = True) -> Path:
    """Write a manifest dir for ``task`` with ``n`` utterances of random tokens."""
    import kaldiio

    sizes = tokenizers or TOKENIZERS
    out = Path(out_dir)
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    template = load_template(task)
    template.save(out / "template.yaml")
    rng = np.random.default_rng(seed)
    dur = rng.uniform(0, 1, size=n)
    ids = [f"{prefix}{i:07d}" for i in range(n)]
    spks = [f"spk{i % n_speakers}" for i in range(n)]
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for utt, spk in zip(ids, spks):
            segs = {s.name: (spk if s.modality == "spk_prompt" else f"{utt}.{s.name}") for s in template.segments}
            f.write(json.dumps({"id": utt, "spk": spk, "segments": segs}) + "\n")
    if not write_tokens:
        return out
    for seg in template.segments:
        if seg.modality == "spk_prompt":
            continue
        lo, hi = frames if seg.is_audio else text_len
        lens = (lo + dur * (hi - lo)).astype(int) + rng.integers(0, 3, size=n)
        cb = sizes[seg.tokenizer]
        spec = f"ark,scp:{(out / 'tokens' / seg.name).resolve()}.ark,{out / 'tokens' / seg.name}.scp"
        with kaldiio.WriteHelper(spec, write_function="numpy") as w, \
                open(out / "tokens" / f"{seg.name}.lengths", "w", encoding="utf-8") as lf:
            for utt, m in zip(ids, lens):
                w[utt] = np.stack([rng.integers(0, c, size=m) for c in cb], axis=1).astype(np.int32)
                lf.write(f"{utt} {m}\n")
    return out


def make_lengths_only(out_dir: str | os.PathLike, task: str, n: int, seed: int = 0) -> Path:
    """A manifest + scp/lengths index of ``n`` examples whose arks are never read (for memory
    benchmarks of indexing: the scp points at offsets of a placeholder ark)."""
    out = make_dump(out_dir, task, n, seed, write_tokens=False)
    rng = np.random.default_rng(seed)
    template = load_template(task)
    for seg in template.segments:
        if seg.modality == "spk_prompt":
            continue
        lens = rng.integers(10, 500, size=n)
        ark = (out / "tokens" / f"{seg.name}.ark").resolve()
        ark.touch()
        scp, lengths = out / "tokens" / f"{seg.name}.scp", out / "tokens" / f"{seg.name}.lengths"
        with open(scp, "w") as s, open(lengths, "w") as lf:
            for i, m in enumerate(lens):
                s.write(f"utt{i:07d} {ark}:{i * 1000}\n")
                lf.write(f"utt{i:07d} {m}\n")
    return out


__all__ = ["synthetic_vocab", "make_dump", "make_lengths_only", "TOKENIZERS"]
