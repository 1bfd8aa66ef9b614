"""speechlm fix-data DIR: sort files, drop inconsistent entries, and report exactly what was dropped."""
import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.fix-data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="Kaldi data dir to fix")
    p.add_argument("--out-dir", help="write the fixed dir here (default: in place; changed files are kept in DIR/.backup/)")
    p.add_argument("--no-check-audio", dest="check_audio", action="store_false",
                   help="do not drop utterances whose audio cannot be read")
    p.add_argument("--min-duration", type=float, help="drop utterances shorter than this (seconds)")
    p.add_argument("--max-duration", type=float, help="drop utterances longer than this (seconds)")
    p.add_argument("--max-drop", type=float, default=0.1,
                   help="refuse (write nothing, exit 1) when faults would drop more than this share of the "
                        "utterances (default 0.1; the duration bounds do not count)")
    p.add_argument("--force", action="store_true", help="drop however many utterances the faults take")


def main(args: argparse.Namespace) -> int:
    from speechlm.data.validate import fix_dir

    if not 0 <= args.max_drop <= 1:
        raise ValueError(f"--max-drop is a share of the utterances, in [0, 1]; got {args.max_drop}")
    dropped = fix_dir(Path(args.data_dir), Path(args.out_dir) if args.out_dir else None, args.check_audio,
                      args.min_duration, args.max_duration, max_drop=None if args.force else args.max_drop)
    log.info("dropped %d entr%s", len(dropped), "y" if len(dropped) == 1 else "ies")
    return 0
