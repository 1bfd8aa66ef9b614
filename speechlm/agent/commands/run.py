"""speechlm agent run: the agent loop over episodes -> predictions.jsonl, final_states.jsonl (resumable)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("speechlm.agent.run")


WHISPER_FLAGS = ("whisper_prompt", "whisper_model_dir", "whisper_lm", "whisper_lm_weight", "whisper_nbest",
                 "whisper_speeds")


def add_whisper_arguments(p: argparse.ArgumentParser) -> None:
    """The cascade-whisper options (``agent run``, ``agent chat``): LoopConfig's ``WHISPER_FLAGS``."""
    from speechlm.agent.loop import LoopConfig

    d = LoopConfig()
    p.add_argument("--whisper-prompt", default=d.whisper_prompt,
                   help="cascade-whisper: text Whisper reads as said before each request, which leans it to a "
                        "voice assistant's words ('' for none; default: a few requests to a home assistant)")
    p.add_argument("--whisper-model-dir", default=d.whisper_model_dir,
                   help="cascade-whisper: a CTranslate2 Whisper dir, e.g. one speechlm finetune-whisper wrote ('': the "
                        "bundled tiny.en)")
    p.add_argument("--whisper-lm", default=d.whisper_lm,
                   help="cascade-whisper: a word LM of the requests (speechlm agent train-lm) that re-ranks Whisper's "
                        "--whisper-nbest texts ('': Whisper's first choice)")
    p.add_argument("--whisper-lm-weight", type=float, default=d.whisper_lm_weight,
                   help="the LM's log probability's weight next to Whisper's")
    p.add_argument("--whisper-nbest", type=int, default=d.whisper_nbest, help="Whisper texts re-ranked by --whisper-lm")
    p.add_argument("--whisper-speeds", default=d.whisper_speeds,
                   help="cascade-whisper: playback speeds Whisper hears each request at, the likeliest texts kept, "
                        "e.g. 0.92,1,1.08 (default 1: as recorded)")


def whisper_options(args: argparse.Namespace) -> dict:
    """LoopConfig keyword arguments of the flags :func:`add_whisper_arguments` added."""
    return {k: getattr(args, k) for k in WHISPER_FLAGS}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.agent.loop import HEAR, MODES, LoopConfig

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
    p.add_argument("--no-valid-calls", action="store_true",
                   help="let the model write any turn (default: decoding allows only calls of known tools with "
                        "their own arguments, each once, and enum values from the tool's schema, or an answer)")
    p.add_argument("--no-copy-values", action="store_true",
                   help="cascades: let a call's values hold any word (default: only words the user said, a tool "
                        "returned, numbers, days and the tools' enum values)")
    p.add_argument("--no-typed-values", action="store_true",
                   help="cascades: a value need not be one of the names of its kind the user said (default: a "
                        "slot whose kind of name - a place, a room, a station - the user said one of the home's "
                        "of takes one of those)")
    p.add_argument("--free-answers", action="store_true",
                   help="let an answer hold any words (default, with valid calls: it restates the results of the "
                        "request's calls, any of them in order, tells an error ('sorry, ...'), asks back, or is 'done')")
    p.add_argument("--ground", type=float, default=d.ground,
                   help="a call's value that neither the user said nor a tool returned becomes the user's closest "
                        "word span when their character distance is at most this (0: keep values as decoded)")
    p.add_argument("--snap-names", type=float, default=d.snap_names,
                   help="cascades: a span of heard words whose spelling is at least this similar to a name of the "
                        "home (a room, a podcast, a station...) becomes that name, e.g. 'garbage lights' -> 'garage "
                        "lights' (0: off)")
    p.add_argument("--hear", default=d.hear, choices=HEAR,
                   help="e2e with an inner monologue: asr: the model's asr task (its decode config, e.g. joint "
                        "CTC/attention beam) hears the words the monologue then holds; monologue: the dialogue task "
                        "writes them itself; auto (default): asr where the model has that task")
    add_whisper_arguments(p)
    p.add_argument("--ttft", action="store_true", help="also time the first token of each request (one more prefill)")
    p.add_argument("--speak", action="store_true",
                   help="speak the answers into OUT_DIR/wav/: the model's plain_tts task if it has one, else espeak-ng")
    p.add_argument("--dialogue-task", default=None,
                   help="the e2e task (default: spoken_dialogue where the model has it, else spoken_dialogue_monologue)")
    p.add_argument("--command-task", default=d.command_task, help="the cascade's text task")
    p.add_argument("--asr-task", default=d.asr_task, help="the cascade's ASR task")
    p.add_argument("--asr-model-dir", default=None,
                   help="cascade: the packed model whose ASR task transcribes (default: --model-dir), e.g. the "
                        "recipe's SpeechLM when --model-dir is a parser trained apart")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per job (0: the cores divided by --nj). The loop's small decoding batches "
                        "run fastest on one thread (48 episode steps on the 2-core machine, busy: 2.7 s with 1 "
                        "thread, 56 s with 2); use --nj for more cores")
    p.add_argument("--nj", type=int, default=1,
                   help="parallel jobs, each over every NJ-th episode (OUT_DIR/shards/I/), merged at the end")
    p.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)  # a child job of --nj (1-based)
    p.add_argument("--seed", type=int, default=d.seed)


def _loop_config(args: argparse.Namespace):
    from speechlm.agent.loop import LoopConfig

    return LoopConfig(mode=args.mode, max_turns=args.max_turns, batch_size=args.batch_size, max_len=args.max_len,
                      retry=not args.no_retry, retry_temperature=args.retry_temperature,
                      valid_calls=not args.no_valid_calls, copy_values=not args.no_copy_values,
                      typed_values=not args.no_typed_values, valid_answers=not args.free_answers,
                      ground=args.ground, snap_names=args.snap_names, hear=args.hear,
                      ttft=args.ttft, speak=args.speak, **whisper_options(args),
                      dialogue_task=args.dialogue_task or "", command_task=args.command_task, asr_task=args.asr_task,
                      seed=args.seed).validate()


def _child_command(args: argparse.Namespace, shard: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "speechlm", "agent", "run", "--model-dir", str(args.model_dir), "--episodes",
           str(args.episodes), "--out-dir", str(args.out_dir), "--nj", str(args.nj), "--shard", str(shard),
           "--threads", str(threads)]
    for flag in ("mode", "max_turns", "limit", "batch_size", "max_len", "retry_temperature", "ground", "snap_names",
                 "hear", *WHISPER_FLAGS, "dialogue_task", "command_task", "asr_task", "seed", "asr_model_dir"):
        if getattr(args, flag) is not None:
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    for flag in ("no_retry", "no_valid_calls", "no_copy_values", "no_typed_values", "free_answers", "ttft", "speak"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    return cmd


def _run_jobs(args: argparse.Namespace, out: Path) -> None:
    """Run the ``--nj`` shards as child processes (logs in ``out/log/run.<shard>.log``)."""
    import os

    from speechlm.utils.jobs import run_jobs
    from speechlm.utils.threads import available_cores

    threads = args.threads or max(1, available_cores() // args.nj)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run_jobs([(shard, _child_command(args, shard, threads), out / "log" / f"run.{shard}.log")
              for shard in range(1, args.nj + 1)], env, "agent run job", args.nj)


def _merge(out: Path, nj: int, ids: list[str]) -> int:
    """Concatenate the shards' records in episode order into ``out`` (atomically); returns the count."""
    import json

    from speechlm.agent.loop import read_jsonl_ids
    from speechlm.utils.fileio import atomic_open

    n = 0
    for name in ("predictions.jsonl", "final_states.jsonl"):
        recs: dict[str, dict] = {}
        for shard in range(1, nj + 1):
            recs.update(read_jsonl_ids(out / "shards" / str(shard) / name))
        with atomic_open(out / name) as f:
            for i in ids:
                if i in recs:
                    f.write(json.dumps(recs[i], ensure_ascii=False) + "\n")
        n = sum(i in recs for i in ids)
    return n


def main(args: argparse.Namespace) -> int:
    import torch

    import speechlm
    from speechlm.agent.episodes import read_episodes
    from speechlm.agent.loop import run_agent
    from speechlm.eval.recognizers import parse_speeds
    from speechlm.utils.fileio import write_text

    if args.nj < 1 or (args.shard is not None and not 1 <= args.shard <= args.nj):
        raise ValueError(f"--nj must be >= 1 and --shard in 1..{args.nj}")
    cfg = _loop_config(args)
    episodes = read_episodes(args.episodes)
    if args.limit:
        episodes = episodes[: args.limit]
    out = Path(args.out_dir)
    t0 = time.perf_counter()
    if args.nj > 1 and args.shard is None:
        _run_jobs(args, out)
        n = _merge(out, args.nj, [ep.id for ep in episodes])
        stats = {"episodes": len(episodes), "ran": n, "skipped": 0}
    else:
        if args.threads or args.nj > 1:
            from speechlm.utils.threads import available_cores

            torch.set_num_threads(args.threads or max(1, available_cores() // args.nj))
        torch.manual_seed(args.seed)
        if args.shard is not None:
            episodes = episodes[args.shard - 1 :: args.nj]
            out = out / "shards" / str(args.shard)
        pipe = speechlm.load(args.model_dir)
        asr_pipe = speechlm.load(args.asr_model_dir) if args.asr_model_dir and args.mode == "cascade" else None
        stats = run_agent(pipe, episodes, out, cfg, audio_base=Path(args.episodes).resolve().parent,
                          asr_pipe=asr_pipe)
    wall = time.perf_counter() - t0
    asr_line = f"asr_model_dir {args.asr_model_dir}\n" if args.asr_model_dir else ""
    if cfg.whisper_model_dir:
        asr_line += f"whisper_model_dir {cfg.whisper_model_dir}\n"
    if parse_speeds(cfg.whisper_speeds) != (1.0,):
        asr_line += f"whisper_speeds {cfg.whisper_speeds}\n"
    if cfg.whisper_lm:
        asr_line += f"whisper_lm {cfg.whisper_lm} (weight {cfg.whisper_lm_weight}, {cfg.whisper_nbest}-best)\n"
    write_text(out / "run.info", f"model_dir {args.model_dir}\n{asr_line}episodes {args.episodes}\nmode {args.mode}\n"
                                 f"nj {args.nj}\nran {stats['ran']}\nskipped {stats['skipped']}\nwall_s {wall:.1f}\n")
    log.info("agent run (%s): %d episodes (%d run now, %d done before) in %.1f s -> %s", args.mode,
             stats["episodes"], stats["ran"], stats["skipped"], wall, out / "predictions.jsonl")
    return 0
