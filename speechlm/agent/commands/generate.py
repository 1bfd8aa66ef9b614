"""speechlm agent generate: episodes from the phrasing templates (train or held-out test style)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("speechlm.agent.generate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="episodes JSONL to write")
    p.add_argument("--n", type=int, required=True, help="number of episodes")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="train: training phrasings and values; test: the held-out phrasings and values")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed and options -> same file)")
    p.add_argument("--mix", default=None,
                   help="shares of the episode kinds, e.g. atomic=0.6,compositional=0.25,recovery=0.15 (the default)")
    p.add_argument("--held-out", default="templates", choices=["templates", "author"],
                   help="how test phrasings differ from training's: templates (both authors' templates pooled, "
                        "a quarter of each intent's held out for test) or author (training author A's, test author B's)")
    p.add_argument("--phrasings", default=None, help="a phrasing YAML of your own instead of the split's")
    p.add_argument("--id-prefix", default=None, help="episode id prefix (default: the split)")
    p.add_argument("--heldout-rate", type=float, default=0.5,
                   help="test split: share of slot values drawn from the held-out values (the rest from training's)")


def parse_mix(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    mix = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--mix: expected kind=share pairs like atomic=0.6,compositional=0.4, got {part!r}") from None
    return mix


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.episodes import write_episodes
    from speechlm.agent.generator import generate_episodes

    if args.n <= 0:
        raise ValueError(f"--n must be positive, got {args.n}")
    episodes = generate_episodes(args.n, args.split, args.seed, parse_mix(args.mix), args.phrasings, args.id_prefix,
                                 heldout_rate=args.heldout_rate, held_out=args.held_out)
    write_episodes(args.out, episodes)
    log.info("wrote %d %s episodes to %s", len(episodes), args.split, args.out)
    return 0
