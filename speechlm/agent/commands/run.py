"""speechlm agent run: the agent loop over episodes -> predictions.jsonl, final_states.jsonl (resumable)."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("speechlm.agent.run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.agent.loop import MODES, LoopConfig

    d = LoopConfig()
    p.add_argument("--model-dir", required=True, help="packed model dir (speechlm pack) with the agent tasks")
    p.add_argument("--episodes", required=True, help="episodes JSONL (speechlm agent generate / import-slurp / synth)")
    p.add_argument("--out-dir", required=True, help="where predictions.jsonl and final_states.jsonl go")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="e2e: spoken_dialogue task on the speech; cascade: the model's asr task then its text "
                        "command task; cascade-whisper: Whisper tiny.en then the command task; text: the reference "
                        "text to the command task (the cascade's ceiling)")
    p.add_argument("--max-turns", type=int, default=d.max_turns, help="assistant steps per user turn")
    p.add_argument("--limit", type=int, default=0, help="run only the first N episodes (0: all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="episode steps decoded together")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per assistant turn at most")
    p.add_argument("--no-retry", action="store_true", help="no second hypothesis after an invalid call")
    p.add_argument("--retry-temperature", type=float, default=d.retry_temperature,
                   help="sampling temperature of the retry (greedy/sampling decode configs)")
    p.add_argument("--ttft", action="store_true", help="also time the first token of each request (one more prefill)")
    p.add_argument("--speak", action="store_true",
                   help="speak the answers into OUT_DIR/wav/: the model's plain_tts task if it has one, else espeak-ng")
    p.add_argument("--dialogue-task", default=d.dialogue_task, help="the e2e task")
    p.add_argument("--command-task", default=d.command_task, help="the cascade's text task")
    p.add_argument("--asr-task", default=d.asr_task, help="the cascade's ASR task")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    p.add_argument("--seed", type=int, default=d.seed)


def main(args: argparse.Namespace) -> int:
    import torch

    import speechlm
    from speechlm.agent.episodes import read_episodes
    from speechlm.agent.loop import LoopConfig, run_agent
    from speechlm.utils.fileio import write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    episodes = read_episodes(args.episodes)
    if args.limit:
        episodes = episodes[: args.limit]
    cfg = LoopConfig(mode=args.mode, max_turns=args.max_turns, batch_size=args.batch_size, max_len=args.max_len,
                     retry=not args.no_retry, retry_temperature=args.retry_temperature, ttft=args.ttft,
                     speak=args.speak, dialogue_task=args.dialogue_task, command_task=args.command_task,
                     asr_task=args.asr_task, seed=args.seed).validate()
    pipe = speechlm.load(args.model_dir)
    t0 = time.perf_counter()
    out = Path(args.out_dir)
    stats = run_agent(pipe, episodes, out, cfg, audio_base=Path(args.episodes).resolve().parent)
    wall = time.perf_counter() - t0
    write_text(out / "run.info", f"model_dir {args.model_dir}\nepisodes {args.episodes}\nmode {args.mode}\n"
                                 f"ran {stats['ran']}\nskipped {stats['skipped']}\nwall_s {wall:.1f}\n")
    log.info("agent run (%s): %d episodes (%d run now, %d done before) in %.1f s -> %s", args.mode,
             stats["episodes"], stats["ran"], stats["skipped"], wall, out / "predictions.jsonl")
    return 0
