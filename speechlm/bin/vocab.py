"""speechlm vocab: build or extend the shared vocabulary (token_list.json)."""
import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.vocab")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizers", required=True, help="tokenizers.yaml (all of its tokenizers are added)")
    p.add_argument("--tasks", nargs="+", required=True, help="task names to add")
    p.add_argument("--out", required=True, help="token_list.json to write")
    p.add_argument("--extend", help="an existing token_list.json to extend (its ids never move)")


def build_vocab(tokenizers_yaml: str, tasks: list[str], base=None):
    """Add every tokenizer of ``tokenizers_yaml`` and every task to ``base`` (or a new vocabulary)."""
    from speechlm.tokenizers import load_tokenizers
    from speechlm.vocab import Vocabulary

    vocab = base or Vocabulary()
    for name, tok in load_tokenizers(tokenizers_yaml).items():
        vocab.add_tokenizer(name, tok.codebook_sizes)
    for t in tasks:
        vocab.add_task(t)
    return vocab


def main(args: argparse.Namespace) -> int:
    from speechlm.vocab import Vocabulary

    base = Vocabulary.load(args.extend) if args.extend else None
    old = len(base) if base else 0
    vocab = build_vocab(args.tokenizers, args.tasks, base)
    vocab.save(Path(args.out))
    log.info("vocabulary %s: %d tokens (%d new), tasks: %s, tokenizers: %s", args.out, len(vocab),
             len(vocab) - old, ", ".join(vocab.tasks), ", ".join(f"{k} x{len(r)}" for k, r in vocab.ranges.items()))
    return 0
