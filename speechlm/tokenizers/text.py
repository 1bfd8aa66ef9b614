"""Text tokenizers: SentencePiece (BPE / unigram) and characters."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, TextTokenizer
from speechlm.utils.fileio import atomic_open

log = logging.getLogger(__name__)


@TOKENIZERS.register("sentencepiece")
class SentencePieceTokenizer(TextTokenizer):
    """SentencePiece model file (train one with ``speechlm train-bpe``)."""

    path_options = ("model",)

    def __init__(self, model: str) -> None:
        import sentencepiece as spm

        if not Path(model).is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {model} (train it with `speechlm train-bpe`)")
        self.model = model
        self.sp = spm.SentencePieceProcessor(model_file=model)

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.sp.get_piece_size()]

    def encode(self, value: str) -> np.ndarray:
        return np.asarray(self.sp.encode(value), dtype=np.int32).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> str:
        return self.sp.decode(self._column(tokens))

    def files(self) -> list[Path]:
        return [Path(self.model)]


@TOKENIZERS.register("char")
class CharTokenizer(TextTokenizer):
    """Characters from a vocabulary file (one symbol per line; ``<space>`` for blanks, line 0 ``<unk>``)."""

    path_options = ("vocab",)
    SPACE = "<space>"

    def __init__(self, vocab: str) -> None:
        if not Path(vocab).is_file():
            raise FileNotFoundError(f"character vocabulary not found: {vocab} (make it with `speechlm train-bpe --model-type char`)")
        self.vocab = vocab
        self.symbols = Path(vocab).read_text(encoding="utf-8").splitlines()
        if not self.symbols or self.symbols[0] != "<unk>":
            raise ValueError(f"{vocab}: line 1 must be <unk>")
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(self.symbols)]

    def encode(self, value: str) -> np.ndarray:
        ids = [self.index.get(self.SPACE if c == " " else c, 0) for c in value]
        return np.asarray(ids, dtype=np.int32).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> str:
        syms = [self.symbols[i] for i in self._column(tokens)]
        return "".join(" " if s == self.SPACE else s for s in syms)

    def files(self) -> list[Path]:
        return [Path(self.vocab)]


def train_sentencepiece(
    texts: list[str],
    out_dir: str | os.PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    user_symbols: list[str] | None = None,
    character_coverage: float = 1.0,
) -> Path:
    """Train ``out_dir/bpe.model`` (or ``out_dir/chars.txt`` for ``model_type='char'``) on ``texts``."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_type == "char":
        chars = sorted({c for t in texts for c in t if c != " "})
        path = out_dir / "chars.txt"
        with atomic_open(path) as f:
            f.write("\n".join(["<unk>", CharTokenizer.SPACE, *(user_symbols or []), *chars]) + "\n")
        return path
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"unknown model type {model_type!r}; valid choices: bpe, unigram, char")
    with atomic_open(out_dir / "train_text.txt") as f:
        f.write("\n".join(texts) + "\n")
    prefix = out_dir / ".bpe.tmp"
    spm.SentencePieceTrainer.train(
        input=str(out_dir / "train_text.txt"),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        user_defined_symbols=user_symbols or [],
        input_sentence_size=10_000_000,
        shuffle_input_sentence=True,
        minloglevel=2,
        num_threads=1,
        hard_vocab_limit=model_type == "bpe",  # unigram: nbpe is an upper bound on small corpora
    )
    os.replace(f"{prefix}.vocab", out_dir / "bpe.vocab")
    os.replace(f"{prefix}.model", out_dir / "bpe.model")  # the model last: its presence means done
    return out_dir / "bpe.model"
