#!/usr/bin/env python3
"""Kaldi data dirs from LJSpeech-1.1 in the standard download layout (no download here):

    <corpus>/metadata.csv     "<id>|<raw text>|<normalized text>" per line, no quoting
    <corpus>/wavs/<id>.wav    22.05 kHz mono

``<corpus>`` is the ``LJSpeech-1.1`` dir (or a dir that contains it). The last ``--num-test``
lines of metadata.csv are the test set, the ``--num-dev`` before them the dev set, the rest the
training set (the file's order, so the split is the same everywhere). The transcript is the
normalized text (numbers spelled out), or the raw text where that is empty. One speaker, "LJ".
Audio is the wav path, or with ``--fs`` a ``sox ... -r FS -t wav - |`` resampling pipe.
"""
from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

from speechlm.data.kaldi import Utt, write_data_dir


def find_corpus(path: Path) -> Path:
    for cand in (path / "LJSpeech-1.1", path):
        if (cand / "metadata.csv").is_file():
            return cand
    raise ValueError(f"{path}: no metadata.csv in it or in {path / 'LJSpeech-1.1'}; "
                     "give the dir where LJSpeech-1.1.tar.bz2 was unpacked")


def read_metadata(corpus: Path, fs: int | None) -> list[Utt]:
    meta = corpus / "metadata.csv"
    utts = []
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) != 3:
                raise ValueError(f"{meta} line {lineno}: expected 3 '|'-separated fields "
                                 f"(id|text|normalized text), got {len(fields)}")
            utt, raw, norm = (x.strip() for x in fields)
            text = norm or raw
            if not utt or not text:
                raise ValueError(f"{meta} line {lineno}: empty id or text")
            wav = (corpus / "wavs" / f"{utt}.wav").resolve()
            if not wav.is_file():
                raise ValueError(f"{meta} line {lineno}: audio {wav} not found")
            entry = f"sox {shlex.quote(str(wav))} -r {fs} -t wav - |" if fs else str(wav)
            utts.append(Utt(utt, entry, text, "LJ"))
    return utts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="LJSpeech-1.1 dir (or the dir containing it)")
    p.add_argument("--out", required=True, help="writes <out>/train, <out>/dev, <out>/test")
    p.add_argument("--num-dev", type=int, default=250)
    p.add_argument("--num-test", type=int, default=250)
    p.add_argument("--fs", type=int, default=0, help="resample with a sox pipe to this rate (0: keep the wav path)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # write_data_dir's summary
    try:
        utts = read_metadata(find_corpus(Path(args.corpus)), args.fs or None)
        n_train = len(utts) - args.num_dev - args.num_test
        if n_train < 1 or args.num_dev < 1 or args.num_test < 1:
            raise ValueError(f"{len(utts)} utterances cannot be split into {args.num_dev} dev, "
                             f"{args.num_test} test and at least one training utterance")
        out = Path(args.out)
        write_data_dir(out / "train", utts[:n_train])
        write_data_dir(out / "dev", utts[n_train:n_train + args.num_dev])
        write_data_dir(out / "test", utts[n_train + args.num_dev:])
    except ValueError as e:
        raise SystemExit(f"prepare_ljspeech.py: {e}")


if __name__ == "__main__":
    main()
