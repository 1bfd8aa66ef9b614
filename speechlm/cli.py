"""The one ``speechlm`` command. Each subcommand is a module in ``speechlm/bin/`` with
``add_arguments(parser)`` and ``main(args) -> int``; adding one is one file plus one line below.

Every subcommand accepts ``--config file.yaml``: its keys are the subcommand's option names
(dashes or underscores), unknown keys are an error, and flags given on the command line win. A
module may define ``upgrade_config(data) -> data`` for files written by older versions (``train``
reads an old run's ``config.yaml`` so).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from speechlm.registry import suggest

# name -> (module, one-line help). Modules are imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("speechlm.bin.agent", "voice agents: episodes, spoken versions, the agent loop, scoring, forecasts"),
    "decode": ("speechlm.bin.decode", "decode a manifest with a trained or packed model"),
    "finetune-whisper": ("speechlm.bin.finetune_whisper", "fine-tune Whisper's decoder on a data dir's speech "
                                                          "(CTranslate2 dir in and out)"),
    "fix-data": ("speechlm.bin.fix_data", "sort a Kaldi data dir and drop inconsistent entries"),
    "pack": ("speechlm.bin.pack", "pack a trained model into a self-contained model dir"),
    "prepare": ("speechlm.bin.prepare", "join a data dir with a task template into a JSONL manifest"),
    "resynth": ("speechlm.bin.resynth", "decode a manifest's reference audio tokens back to wavs (codec ceiling)"),
    "score": ("speechlm.bin.score", "score decoding outputs and write RESULTS.md"),
    "serve": ("speechlm.bin.serve", "an OpenAI-compatible HTTP server of a packed model (FastAPI + uvicorn)"),
    "tasks": ("speechlm.bin.tasks", "list task templates or show one"),
    "tokenize": ("speechlm.bin.tokenize", "tokenize the segments of a manifest into kaldiio archives"),
    "train": ("speechlm.bin.train", "train a SpeechLM (torchrun aware)"),
    "train-bpe": ("speechlm.bin.train_bpe", "train a SentencePiece text tokenizer"),
    "train-kmeans": ("speechlm.bin.train_kmeans", "train k-means units over SSL or fallback features"),
    "tts-diagnose": ("speechlm.bin.tts_diagnose", "why TTS is (un)intelligible: teacher-forced resynthesis, "
                                                   "decode-path parity, per-field errors and drift"),
    "validate-data": ("speechlm.bin.validate_data", "check a Kaldi data dir and report every problem"),
    "vocab": ("speechlm.bin.vocab", "build or extend the shared vocabulary (token_list.json)"),
}


def _apply_config(parser: argparse.ArgumentParser, argv: list[str], upgrade=None) -> argparse.Namespace:
    """Parse ``argv``; if ``--config`` is given, its keys become defaults that flags override
    (after ``upgrade(data)``, when the command has one).

    A key of the file satisfies a required option (``speechlm prepare --config c.yaml`` with
    ``task``, ``data_dir`` and ``out_dir`` in it), so the file is read before the full parse."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        from speechlm.config import ConfigError, load_yaml

        try:
            data = load_yaml(known.config) or {}
        except ConfigError as e:  # a missing or malformed file: one line, not a traceback
            parser.error(str(e))
        if not isinstance(data, dict):
            parser.error(f"{known.config}: expected a mapping of option names to values")
        if upgrade is not None:
            data = upgrade(data)
        actions = {a.dest: a for a in parser._actions}
        valid = sorted(d for d in actions if d not in ("help", "config"))
        defaults = {}
        for key, value in data.items():
            dest = str(key).replace("-", "_")
            if dest not in actions or dest in ("help", "config"):
                parser.error(f"{known.config}: unknown option {key!r}{suggest(dest, valid)}; valid: {', '.join(valid)}")
            defaults[dest] = value
            action = actions[dest]
            if action.required:  # the file gives it: the command line no longer has to
                action.required = False
                if not action.option_strings and action.nargs is None:
                    action.nargs = "?"  # a positional (e.g. fix-data's data dir) may now be omitted
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = COMMANDS
    from speechlm import __version__

    top = argparse.ArgumentParser(
        prog="speechlm",
        allow_abbrev=False,  # `--forc` must not silently mean `--force`
        description="speechlm: build speech language models and voice agents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<14} {h}" for n, (_, h) in cmds.items())
        + "\n\nRun `speechlm COMMAND --help` for the options of one command.",
    )
    top.add_argument("--version", action="version", version=f"speechlm {__version__}")
    top.add_argument("command", nargs="?", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        top.parse_args(argv)
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        top.error(f"unknown command {name!r}{suggest(name, cmds)}; valid: {', '.join(cmds)}")
    module = importlib.import_module(cmds[name][0])
    parser = argparse.ArgumentParser(prog=f"speechlm {name}", description=cmds[name][1], allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of option values (flags override it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    module.add_arguments(parser)
    args = _apply_config(parser, rest, getattr(module, "upgrade_config", None))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.main(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Expected user errors: one clear line, no traceback unless --verbose.
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        logging.getLogger("speechlm").error("%s", msg)
        return 1
