"""speechlm agent datadir: episodes with audio -> Kaldi data dirs (one utterance per assistant step)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", required=True, help="episodes JSONL whose user turns have audio (speechlm agent synth)")
    p.add_argument("--out-dir", required=True, help="the step data dir (wav.scp, text, history, history.cascade, "
                                                    "known, response, text.2, utt2spk, spk2utt)")
    p.add_argument("--asr-dir", default=None, help="also an asr data dir with one utterance per user turn")
    p.add_argument("--text-only", action="store_true",
                   help="episodes without audio: write no wav.scp (a data dir for the text-only command task)")


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.datadir import write_asr_dir, write_dialogue_dir
    from speechlm.agent.episodes import read_episodes

    episodes = read_episodes(args.episodes)
    write_dialogue_dir(episodes, args.out_dir, require_audio=not args.text_only)
    if args.asr_dir:
        write_asr_dir(episodes, args.asr_dir)
    return 0
