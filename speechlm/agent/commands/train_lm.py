"""speechlm agent train-lm: a word n-gram model of the requests (Kaldi ``text`` files) that
re-ranks Whisper's hypotheses in the cascade (``speechlm agent run --whisper-lm``)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("speechlm.agent.train_lm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", required=True,
                   help="Kaldi text files (<utt> <words>), e.g. data/train/text data/train_text/text: the training "
                        "requests (each distinct sentence counts once)")
    p.add_argument("--out", required=True, help="the model (JSON)")
    p.add_argument("--order", type=int, default=3, help="n-gram order")
    p.add_argument("--discount", type=float, default=0.75, help="absolute discount at every order")


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.wordlm import WordLM
    from speechlm.data.kaldi import read_file

    sentences: dict[str, None] = {}
    for path in args.text:
        for words in read_file(path).values():
            sentences[" ".join(words.lower().split())] = None
    lm = WordLM.train(sentences, order=args.order, discount=args.discount)
    lm.save(args.out)
    log.info("word LM of order %d: %d sentences of %s -> %s", args.order, len(sentences), " ".join(args.text), args.out)
    return 0
