"""speechlm agent score: task success, SLU-F1, latency of an agent run -> scores.json, RESULTS.md row."""
from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

log = logging.getLogger("speechlm.agent.score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="an agent run's out dir (predictions.jsonl, final_states.jsonl)")
    p.add_argument("--episodes", required=True, help="the episodes JSONL the run used")
    p.add_argument("--name", default=None, help="the run's row name in RESULTS.md (default: the run dir's name)")
    p.add_argument("--test-set", default=None, help="the table's test-set name (default: the episode file's stem)")
    p.add_argument("--results", default=None,
                   help="RESULTS.md to add the row to (a rerun of the same name, test set and mode replaces it)")


def main(args: argparse.Namespace) -> int:
    from speechlm.agent.episodes import read_episodes
    from speechlm.agent.score import format_summary, score_run

    run = Path(args.run_dir)
    name = args.name or run.name
    test_set = args.test_set or Path(args.episodes).stem
    command = ["speechlm", "agent", "score", "--run-dir", str(run), "--episodes", str(args.episodes)]
    for flag in ("name", "test_set", "results"):
        if getattr(args, flag):
            command += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    summary = score_run(run, read_episodes(args.episodes), name, test_set, command=shlex.join(command),
                        data=str(args.episodes), results=args.results)
    print(format_summary(name, summary))
    return 0
