"""speechlm agent import-slurp: SLURP-format annotation files -> episodes (intent = scenario_action)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("speechlm.agent.import-slurp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slurp", required=True, help="SLURP-format JSONL (slurp_id, sentence, sentence_annotation, "
                                                   "scenario, action, recordings)")
    p.add_argument("--wav-scp", default=None, help="'key path' lines mapping slurp_id or a recording's file to audio")
    p.add_argument("--out", required=True, help="episodes JSONL to write")
    p.add_argument("--split", default="test", help="the episodes' split label (default: test)")


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.episodes import write_episodes
    from speechlm.agent.slurp import import_slurp

    episodes = import_slurp(args.slurp, args.wav_scp, split=args.split)
    if not episodes:
        raise ValueError(f"{args.slurp}: no episodes imported" + (f" (no row has audio in {args.wav_scp})" if args.wav_scp else ""))
    write_episodes(args.out, episodes)
    errors = sum("tool_error" in e.meta for e in episodes)
    log.info("wrote %d episodes to %s (%d whose call the home tools refuse, see meta.tool_error)",
             len(episodes), args.out, errors)
    return 0
