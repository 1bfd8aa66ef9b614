"""speechlm agent forecast: teacher-forced token statistics of every checkpoint of a run on the held-out
reference trajectories, next to each checkpoint's task success, and their Spearman correlation."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("speechlm.agent.forecast")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", required=True, help="training run dir (exp/<tag>: checkpoints/, tokenizers.yaml, tasks/)")
    p.add_argument("--episodes", required=True, help="held-out episodes JSONL (with audio for the e2e task)")
    p.add_argument("--checkpoints", nargs="*", default=None,
                   help="checkpoint names (step_N) or dirs (default: every complete checkpoint of the run)")
    p.add_argument("--task", default="spoken_dialogue", help="the task whose reference steps are scored")
    p.add_argument("--data", default=None,
                   help="reference steps from a tokenized manifest dir instead, as task:name:dumpdir "
                        "(e.g. the recipe's held-out spoken_dialogue dump: no audio encoding)")
    p.add_argument("--limit", type=int, default=0, help="reference steps at most (0: all)")
    p.add_argument("--out-dir", default=None, help="where forecast.json and forecast.md go (default EXP/forecast)")
    p.add_argument("--runs-dir", default=None,
                   help="task success per checkpoint from RUNS_DIR/<checkpoint>/scores.json (speechlm agent score); "
                        "with --run-agent the runs are made there")
    p.add_argument("--run-agent", action="store_true",
                   help="run the agent with every checkpoint on the episodes and score it (success column)")
    p.add_argument("--mode", default="e2e", help="agent mode of --run-agent")
    p.add_argument("--agent-limit", type=int, default=0, help="episodes per checkpoint run (0: all)")
    p.add_argument("--decode-config", default=None,
                   help="decode YAML for --run-agent (default: EXP/decode.yaml, else EXP/packed/decode.yaml)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--nj", type=int, default=1,
                   help="parallel jobs, each over every NJ-th checkpoint (logs and tables in OUT_DIR/jobs/I/), "
                        "merged at the end")


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.forecast import STATS, find_checkpoints, render_table, spearman
    from speechlm.utils.fileio import write_json, write_text

    if args.nj < 1:
        raise ValueError(f"--nj must be >= 1, got {args.nj}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    exp = Path(args.exp_dir)
    out = Path(args.out_dir or exp / "forecast")
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    ckpts = find_checkpoints(exp, args.checkpoints)
    nj = min(args.nj, len(ckpts))
    rows = _run_jobs(args, ckpts, nj, out, runs_dir) if nj > 1 else _rows(args, ckpts, exp, runs_dir)
    corr = {k: spearman([r[k] for r in rows], [r["success"] for r in rows]) for k in STATS}
    write_json(out / "forecast.json", {"exp_dir": str(exp), "episodes": str(args.episodes), "task": args.task,
                                       "data": args.data, "checkpoints": rows, "spearman": corr})
    table = render_table(rows, corr)
    write_text(out / "forecast.md", f"# Forecasts of task success: {exp.name}\n\nReference steps: "
               f"{args.data or args.episodes} ({rows[0]['tokens'] if rows else 0} target tokens, task {args.task}).\n\n"
               + table)
    print(table)
    return 0


def _run_jobs(args: argparse.Namespace, ckpts: list[Path], nj: int, out: Path, runs_dir: Path) -> list[dict]:
    """The rows of ``ckpts`` from ``nj`` child processes, each over every ``nj``-th checkpoint."""
    import os
    import sys

    from speechlm.utils.jobs import run_jobs

    jobs = []
    for i in range(1, nj + 1):
        cmd = [sys.executable, "-m", "speechlm", "agent", "forecast", "--exp-dir", str(args.exp_dir),
               "--episodes", str(args.episodes), "--task", args.task, "--limit", str(args.limit),
               "--out-dir", str(out / "jobs" / str(i)), "--runs-dir", str(runs_dir), "--mode", args.mode,
               "--agent-limit", str(args.agent_limit), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--checkpoints", *[str(c) for c in ckpts[i - 1 :: nj]]]
        cmd += ["--data", args.data] if args.data else []
        cmd += ["--decode-config", args.decode_config] if args.decode_config else []
        cmd += ["--run-agent"] if args.run_agent else []
        jobs.append((i, cmd, out / "jobs" / str(i) / "forecast.log"))
    run_jobs(jobs, dict(os.environ), "agent forecast job", nj)
    rows = [r for i in range(1, nj + 1)
            for r in json.loads((out / "jobs" / str(i) / "forecast.json").read_text())["checkpoints"]]
    order = {str(c): k for k, c in enumerate(ckpts)}
    return sorted(rows, key=lambda r: order[r["path"]])


def _rows(args: argparse.Namespace, ckpts: list[Path], exp: Path, runs_dir: Path) -> list[dict]:
    """Per checkpoint: its token statistics on the reference steps and, from runs, its task success."""
    from speechlm.agent.episodes import read_episodes
    from speechlm.agent.forecast import (STATS, checkpoint_step, examples_from_dump, examples_from_steps,
                                         pipeline_for, reference_steps, token_stats)

    episodes = read_episodes(args.episodes)
    audio_base = Path(args.episodes).resolve().parent
    examples = None
    rows = []
    for ckpt in ckpts:
        pipe = pipeline_for(ckpt, exp, args.decode_config)
        if examples is None:  # the tokens are the same for every checkpoint of a run: encode once
            if args.data:
                examples = examples_from_dump(args.data, pipe.vocab, pipe.model.n_streams, args.limit)
            else:
                steps = reference_steps(episodes, pipe.template(args.task))
                if args.limit:
                    steps = steps[: args.limit]
                examples = examples_from_steps(steps, pipe.template(args.task), pipe.tokenizers, pipe.vocab,
                                               pipe.model.n_streams, audio_base)
            if not examples:
                raise ValueError(f"no reference steps for task {args.task!r} in {args.data or args.episodes}")
            log.info("forecast: %d reference steps, %d checkpoints", len(examples), len(ckpts))
        stats = token_stats(pipe.model, examples, args.batch_size, pipe.decode_config(args.task).precision)
        row = {"checkpoint": ckpt.name, "path": str(ckpt), "step": checkpoint_step(ckpt), **stats, "success": None}
        run_dir = runs_dir / ckpt.name
        if args.run_agent:
            from speechlm.agent.loop import LoopConfig, run_agent
            from speechlm.agent.score import score_run

            eps = episodes[: args.agent_limit] if args.agent_limit else episodes
            preds = run_dir / "predictions.jsonl"
            if preds.is_file() and preds.stat().st_mtime < (ckpt / "model.safetensors").stat().st_mtime:
                # an agent run of an earlier checkpoint of that name (a retrained run): never resume it
                log.info("%s: older than %s, run again", run_dir, ckpt)
                shutil.rmtree(run_dir)
            task = {"dialogue_task": args.task} if args.mode == "e2e" else {}  # the scored task is the one run
            run_agent(pipe, eps, run_dir, LoopConfig(mode=args.mode, batch_size=args.batch_size, **task), audio_base)
            row["success"] = score_run(run_dir, eps, ckpt.name, Path(args.episodes).stem)["success"]
        elif (run_dir / "scores.json").is_file():
            row["success"] = json.loads((run_dir / "scores.json").read_text())["summary"]["success"]
        log.info("%s: %s", ckpt.name, ", ".join(f"{k} {row[k]:.3f}" for k in STATS) +
                 (f", success {row['success']:.1f}%" if row["success"] is not None else ""))
        rows.append(row)
    return rows
