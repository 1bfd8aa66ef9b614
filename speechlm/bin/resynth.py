"""speechlm resynth: decode the reference tokens of a manifest back to audio (the tokenizer's ceiling).

The wavs are what a perfect model would generate: scoring them next to the model's output
separates the model's errors from the codec's (``speechlm score --floor-wav-scp codec=OUT/wav.scp``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.resynth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest-dir", required=True, help="tokenized manifest dir (template.yaml + tokens/)")
    p.add_argument("--tokenizers", required=True, help="tokenizers.yaml that made the tokens")
    p.add_argument("--out-dir", required=True, help="where wav/*.wav and wav.scp go")
    p.add_argument("--segment", help="audio segment to decode (default: the template's first audio target)")
    p.add_argument("--limit", type=int, help="only the first N utterances")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from speechlm.data.audio import write_wav
    from speechlm.data.token_archive import TokenReader
    from speechlm.tasks.template import load_template_file
    from speechlm.tokenizers import load_tokenizers
    from speechlm.utils.fileio import atomic_open, is_done, mark_done

    d, out = Path(args.manifest_dir), Path(args.out_dir)
    template = load_template_file(d / "template.yaml")
    pool = [s for s in template.segments if s.name == args.segment] if args.segment else template.targets
    seg = next((s for s in pool if s.modality == "audio"), None)
    if seg is None:
        raise ValueError(f"{d}: task {template.name!r} has no audio segment "
                         f"{args.segment or '(target)'} to resynthesize")
    scp = out / "wav.scp"
    if is_done(scp):
        log.info("%s is complete, skipping", scp)
        return 0
    tok = load_tokenizers(args.tokenizers, [seg.tokenizer])[seg.tokenizer]
    reader = TokenReader(d / "tokens" / f"{seg.name}.scp")
    utts = sorted(reader)[: args.limit] if args.limit else sorted(reader)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    lines = []
    for utt in tqdm(utts, desc=f"resynth {seg.name}", disable=None):
        path = (out / "wav" / f"{utt}.wav").resolve()
        if not path.is_file():  # a killed run keeps what it wrote
            write_wav(path, tok.decode(reader[utt]), tok.sample_rate)
        lines.append(f"{utt} {path}\n")
    with atomic_open(scp) as f:
        f.writelines(lines)
    mark_done(scp)
    log.info("resynthesized %d utterances of %s with %s -> %s", len(lines), d, seg.tokenizer, scp)
    return 0
