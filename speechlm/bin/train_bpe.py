"""speechlm train-bpe: train a SentencePiece (bpe/unigram) model or a character list on text files."""
import argparse
import logging
import re
from pathlib import Path

log = logging.getLogger("speechlm.train-bpe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", required=True,
                   help="Kaldi 'text' files (utt words...); a .txt file is read as raw lines")
    p.add_argument("--out-dir", required=True, help="writes bpe.model (or chars.txt) here")
    p.add_argument("--nbpe", type=int, default=256, help="vocabulary size")
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char"])
    p.add_argument("--user-symbols", nargs="*", default=[], help="symbols kept whole")
    p.add_argument("--force", action="store_true", help="retrain even if the model exists")


def _lines(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if path.suffix == ".txt":
                out.append(line.strip())
            else:
                parts = line.strip().split(maxsplit=1)
                if len(parts) == 2:
                    out.append(parts[1])
    return [t for t in out if t]


def _vocab_size_error(msg: str, args: argparse.Namespace, n_lines: int) -> str:
    """One line for sentencepiece's failures (its message is a C++ check with a source line)."""
    where = f"{', '.join(args.text)} ({n_lines} lines)"
    high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if high:
        return (f"train-bpe: --nbpe {high.group(1)} is more {args.model_type} pieces than the text of {where} "
                f"can make; the most it can reach is {high.group(2)}: pass --nbpe {high.group(2)} or less, "
                "or train on more text")
    low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if low:
        return (f"train-bpe: --nbpe {low.group(1)} is fewer pieces than the {low.group(2)} characters and special "
                f"pieces of {where} need: pass --nbpe {low.group(2)} or more")
    detail = msg.split("] ", 1)[-1]  # drop the C++ source location
    return f"train-bpe: sentencepiece failed on {where} with --nbpe {args.nbpe}: {detail}"


def main(args: argparse.Namespace) -> int:
    from speechlm.tokenizers.text import train_sentencepiece

    out = Path(args.out_dir) / ("chars.txt" if args.model_type == "char" else "bpe.model")
    if out.exists() and not args.force:
        log.info("%s exists, skipping (use --force to retrain)", out)
        return 0
    texts = [t for p in args.text for t in _lines(Path(p))]
    if not texts:
        raise ValueError(f"no text found in {', '.join(args.text)}")
    if args.model_type != "char" and args.nbpe < 1:
        raise ValueError(f"--nbpe must be a positive vocabulary size, got {args.nbpe}")
    try:
        path = train_sentencepiece(texts, args.out_dir, args.nbpe, args.model_type, args.user_symbols)
    except RuntimeError as e:
        raise ValueError(_vocab_size_error(str(e), args, len(texts))) from None
    log.info("trained %s on %d lines -> %s", args.model_type, len(texts), path)
    return 0
