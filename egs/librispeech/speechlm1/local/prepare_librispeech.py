#!/usr/bin/env python3
"""Kaldi data dir from LibriSpeech subsets in the standard download layout (no download here):

    <corpus>/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    <corpus>/<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt   ("<utt id> WORDS ..." per line)

``<corpus>`` is the ``LibriSpeech`` dir of the unpacked archives (or a dir that contains it).
Several subsets (e.g. the three training ones) can go into one data dir. Utterance ids are the
LibriSpeech ids, speakers the LibriSpeech reader ids. Audio is the flac path (read directly) or,
with ``--pipe``, a ``sox ... -t wav - |`` command that also resamples to ``--fs``.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from speechlm.data.kaldi import Utt, write_data_dir


def find_corpus(path: Path) -> Path:
    """The dir that holds the subsets: ``path`` itself or ``path/LibriSpeech``."""
    for cand in (path / "LibriSpeech", path):
        if cand.is_dir() and any((cand / s).is_dir() for s in SUBSETS):
            return cand
    raise ValueError(f"{path}: no LibriSpeech subset dirs ({', '.join(SUBSETS)}) in it or in "
                     f"{path / 'LibriSpeech'}; give the dir where the archives were unpacked")


SUBSETS = ["dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100",
           "train-clean-360", "train-other-500"]


def read_subset(corpus: Path, subset: str, pipe: bool, fs: int) -> list[Utt]:
    root = corpus / subset
    if not root.is_dir():
        raise ValueError(f"{root}: subset {subset} not found (found: "
                         f"{', '.join(sorted(p.name for p in corpus.iterdir() if p.is_dir()))})")
    utts = []
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise ValueError(f"{root}: no <spk>/<chapter>/<spk>-<chapter>.trans.txt files")
    for trans in transcripts:
        spk = trans.parent.parent.name
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.strip().split(maxsplit=1)
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{trans} line {lineno}: expected '<utt id> <transcript>'")
                utt, text = parts
                if not utt.startswith(f"{spk}-"):
                    raise ValueError(f"{trans} line {lineno}: utterance {utt} is not of reader {spk}")
                flac = (trans.parent / f"{utt}.flac").resolve()
                if not flac.is_file():
                    raise ValueError(f"{trans} line {lineno}: audio {flac} not found")
                wav = f"sox {shlex.quote(str(flac))} -r {fs} -t wav - |" if pipe else str(flac)
                utts.append(Utt(utt, wav, text, spk))
    n_flac = sum(1 for _ in root.glob("*/*/*.flac"))
    if n_flac != len(utts):
        print(f"warning: {root}: {n_flac} flac files, {len(utts)} transcribed; the others are skipped",
              file=sys.stderr)
    return utts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="LibriSpeech dir (or the dir containing it)")
    p.add_argument("--subset", action="append", required=True, choices=SUBSETS, help="repeatable")
    p.add_argument("--out", required=True, help="Kaldi data dir to write")
    p.add_argument("--pipe", action="store_true", help="wav.scp entries as sox pipes instead of paths")
    p.add_argument("--fs", type=int, default=16000, help="sampling rate of the sox pipes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # write_data_dir's summary
    try:
        corpus = find_corpus(Path(args.corpus))
        utts = [u for s in args.subset for u in read_subset(corpus, s, args.pipe, args.fs)]
        write_data_dir(args.out, utts)
    except ValueError as e:
        raise SystemExit(f"prepare_librispeech.py: {e}")


if __name__ == "__main__":
    main()
