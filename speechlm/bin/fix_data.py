"""speechlm fix-data DIR: sort files, drop inconsistent entries, and report exactly what was dropped."""
import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.fix-data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="Kaldi data dir to fix")
    p.add_argument("--out", help="write the fixed dir here (default: in place)")
    p.add_argument("--no-check-audio", dest="check_audio", action="store_false",
                   help="do not drop utterances whose audio cannot be read")
    p.add_argument("--min-duration", type=float, help="drop utterances shorter than this (seconds)")
    p.add_argument("--max-duration", type=float, help="drop utterances longer than this (seconds)")


def main(args: argparse.Namespace) -> int:
    from speechlm.data.validate import fix_dir

    dropped = fix_dir(Path(args.data_dir), Path(args.out) if args.out else None, args.check_audio,
                      args.min_duration, args.max_duration)
    log.info("dropped %d entr%s", len(dropped), "y" if len(dropped) == 1 else "ies")
    return 0
