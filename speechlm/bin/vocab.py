"""speechlm vocab: build or extend the shared vocabulary (token_list.json)."""
import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.vocab")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizers", required=True, help="tokenizers.yaml (all of its tokenizers are added)")
    p.add_argument("--tasks", nargs="+", required=True,
                   help="task names to add (built-in templates or ones in --task-dir)")
    p.add_argument("--task-dir", action="append", default=[], help="extra dir of task templates (repeatable)")
    p.add_argument("--out", required=True, help="token_list.json to write")
    p.add_argument("--extend", help="an existing token_list.json to extend (its ids never move)")


def check_tasks(tasks: list[str], task_dirs: list[str]) -> None:
    """Every name must be a known task template: a typo or a path would get a task token that
    no template (and so no training data) ever uses."""
    from speechlm.config import ConfigError
    from speechlm.registry import suggest
    from speechlm.tasks import find_templates

    found = find_templates(task_dirs)
    for t in tasks:
        if t not in found:
            where = "built-in templates" + (f" and {', '.join(task_dirs)}" if task_dirs else "")
            raise ConfigError(f"--tasks: unknown task {t!r}{suggest(t, found)}; the {where} define: "
                              f"{', '.join(sorted(found))} (a template of your own: pass its dir with --task-dir)")


def build_vocab(tokenizers_yaml: str, tasks: list[str], base=None):
    """Add every tokenizer of ``tokenizers_yaml`` and every task to ``base`` (or a new vocabulary)."""
    from speechlm.tokenizers import load_tokenizers
    from speechlm.vocab import Vocabulary

    vocab = base or Vocabulary()
    toks = load_tokenizers(tokenizers_yaml)
    for name, tok in toks.items():
        vocab.add_tokenizer(name, tok.codebook_sizes, shared_streams(tokenizers_yaml, name, tok, toks, vocab))
    for t in tasks:
        vocab.add_task(t)
    return vocab


def shared_streams(where, name: str, tok, toks: dict, vocab) -> dict[int, tuple[str, int]]:
    """``{stream: (tokenizer, its stream)}``: the streams of ``tok`` that share the rows of the
    same-named streams of its ``rows_of`` tokenizer."""
    from speechlm.config import ConfigError

    other = tok.rows_of
    if other is None:
        return {}
    if other not in toks:
        raise ConfigError(f"{where}:{name}.rows_of: no tokenizer {other!r} in this file; it defines: {', '.join(toks)}")
    if other not in vocab.ranges:
        raise ConfigError(f"{where}:{name}.rows_of: {other!r} must be defined before it (its rows are added first)")
    theirs = {n: j for j, n in enumerate(toks[other].stream_names)}
    shared = {k: (other, theirs[n]) for k, n in enumerate(tok.stream_names) if n in theirs}
    if not shared:
        raise ConfigError(f"{where}:{name}.rows_of: no stream of {name!r} ({', '.join(tok.stream_names)}) is "
                          f"named as a stream of {other!r} ({', '.join(toks[other].stream_names)})")
    return shared


def main(args: argparse.Namespace) -> int:
    from speechlm.vocab import Vocabulary

    check_tasks(args.tasks, args.task_dir)
    base = Vocabulary.load(args.extend) if args.extend else None
    old = len(base) if base else 0
    vocab = build_vocab(args.tokenizers, args.tasks, base)
    vocab.save(Path(args.out))
    log.info("vocabulary %s: %d tokens (%d new), tasks: %s, tokenizers: %s", args.out, len(vocab),
             len(vocab) - old, ", ".join(vocab.tasks), ", ".join(f"{k} x{len(r)}" for k, r in vocab.ranges.items()))
    return 0
