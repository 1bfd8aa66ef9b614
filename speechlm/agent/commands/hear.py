"""speechlm agent hear: the episodes as a recognizer hears them (Whisper's transcripts of their
audio, in the cascade's form), to train a cascade's parser on what it will read."""
from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger("speechlm.agent.hear")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.agent.loop import LoopConfig

    d = LoopConfig()
    p.add_argument("--episodes", required=True, help="episodes JSONL whose user turns have audio (speechlm agent synth)")
    p.add_argument("--out", required=True, help="the heard episodes (JSONL; the words said kept in meta.said)")
    p.add_argument("--data-dir", default=None, help="also write their step data dir here (the command task's)")
    p.add_argument("--cache", default=None,
                   help="transcripts by audio file, appended as they are made, so a killed run resumes "
                        "(default: OUT with .transcripts.jsonl in place of .jsonl)")
    p.add_argument("--limit", type=int, default=0,
                   help="hear only the first N episodes (0: all; Whisper takes ~0.8 s a turn on one core)")
    p.add_argument("--whisper-prompt", default=d.whisper_prompt,
                   help="Whisper's initial prompt, as `speechlm agent run --mode cascade-whisper` gives it")
    p.add_argument("--snap-names", type=float, default=d.snap_names,
                   help="names of the home heard amiss are snapped as the cascades snap them (0: off)")
    p.add_argument("--threads", type=int, default=0, help="Whisper's threads (0: every core this process may use)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from speechlm.agent.datadir import write_dialogue_dir
    from speechlm.agent.episodes import read_episodes, write_episodes
    from speechlm.agent.hear import hear_episodes
    from speechlm.data.audio import load_audio
    from speechlm.eval.recognizers import build_recognizer

    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.with_name(out.name.removesuffix(".jsonl") + ".transcripts.jsonl")
    episodes = read_episodes(args.episodes)
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    episodes = episodes[: args.limit or None]
    whisper = build_recognizer("whisper", threads=args.threads, prompt=args.whisper_prompt)

    def transcribe(path: str) -> str:
        return whisper.transcribe(load_audio(path, 16000, path))

    start = time.perf_counter()
    heard = hear_episodes(episodes, transcribe, cache=cache, snap=args.snap_names,
                          audio_base=Path(args.episodes).resolve().parent)
    write_episodes(out, heard)
    log.info("heard %d of %d episodes in %.1f s (%s) -> %s", len(heard), len(episodes),
             time.perf_counter() - start, whisper.describe(), out)
    if args.data_dir:
        write_dialogue_dir(heard, args.data_dir)
    return 0
