"""speechlm validate-data DIR: report every problem of a Kaldi data dir; exit 1 if any."""
import argparse
import logging

log = logging.getLogger("speechlm.validate-data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="Kaldi data dir (wav.scp, text, utt2spk, ...)")
    p.add_argument("--no-check-audio", dest="check_audio", action="store_false",
                   help="skip opening every audio file")


def main(args: argparse.Namespace) -> int:
    from speechlm.data.kaldi import validate

    problems = validate(args.data_dir, args.check_audio)
    for p in problems:
        log.error("%s", p)
    if problems:
        log.error("%s: %d problem(s); `speechlm fix-data %s` drops the inconsistent entries",
                  args.data_dir, len(problems), args.data_dir)
        return 1
    log.info("%s: OK", args.data_dir)
    return 0
