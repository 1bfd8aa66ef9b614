"""speechlm agent synth: speak the episodes' user turns (espeak-ng, flite, festival voices; the test
split with held-out voices and engines; optional noise) and write the Kaldi data dirs."""
from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger("speechlm.agent.synth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", required=True, help="episodes JSONL (from generate or import-slurp)")
    p.add_argument("--out-dir", required=True, help="dir for the wav files (wav/) and the updated episodes")
    p.add_argument("--out", default=None, help="updated episodes JSONL (default: OUT_DIR/episodes.jsonl)")
    p.add_argument("--train-engines", default="espeak-ng,festival", help="engines of non-test episodes")
    p.add_argument("--test-engines", default="espeak-ng,festival,flite",
                   help="engines of test episodes (held-out voices of the training engines, all voices of the others)")
    p.add_argument("--engine-weights", default="",
                   help="relative share of each engine, e.g. espeak-ng=2,festival=1 (default: equal)")
    p.add_argument("--snr", default="", help="comma-separated SNRs in dB, e.g. 20,10,5 (empty: clean speech)")
    p.add_argument("--noise", default="white,babble", help="noise kinds to draw from: white, babble")
    p.add_argument("--noise-rate", type=float, default=1.0, help="share of episodes that get noise when --snr is given")
    p.add_argument("--seed", type=int, default=0, help="seed of the voice and noise draws")
    p.add_argument("--nj", type=int, default=1, help="parallel synthesis jobs")
    p.add_argument("--overwrite-audio", action="store_true", help="also re-speak turns that already have audio")
    p.add_argument("--data-dir", default=None,
                   help="also write the step data dir here (spoken_dialogue, command, spoken_command tasks)")
    p.add_argument("--asr-dir", default=None, help="also write an asr data dir (one utterance per user turn) here")


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from speechlm.agent.datadir import write_asr_dir, write_dialogue_dir
    from speechlm.agent.episodes import read_episodes, write_episodes
    from speechlm.agent.synth import SynthConfig, synthesize_episodes

    try:
        snrs = [float(x) for x in _list(args.snr)]
    except ValueError:
        raise ValueError(f"--snr: expected numbers like 20,10,5, got {args.snr!r}") from None
    weights = {}
    for part in _list(args.engine_weights):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--engine-weights: expected engine=weight pairs, got {part!r}") from None
    config = SynthConfig(train_engines=_list(args.train_engines), test_engines=_list(args.test_engines), snrs=snrs,
                         noise_rate=args.noise_rate, noise_kinds=_list(args.noise), engine_weights=weights,
                         seed=args.seed).validate()
    episodes = read_episodes(args.episodes)
    out_dir = Path(args.out_dir)
    start = time.perf_counter()
    counts = synthesize_episodes(episodes, out_dir / "wav", config, nj=args.nj, overwrite_audio=args.overwrite_audio)
    took = time.perf_counter() - start
    out = Path(args.out) if args.out else out_dir / "episodes.jsonl"
    write_episodes(out, episodes)
    log.info("synthesized %d files (%d kept, %d noisy) for %d episodes in %.1f s (%.1f files/s); episodes -> %s",
             counts["made"], counts["kept"], counts["noisy"], counts["episodes"], took,
             counts["made"] / took if took > 0 else 0.0, out)
    if args.data_dir:
        write_dialogue_dir(episodes, args.data_dir)
    if args.asr_dir:
        write_asr_dir(episodes, args.asr_dir)
    return 0
