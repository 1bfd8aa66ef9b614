"""speechlm agent: voice-agent commands (``speechlm agent SUB ...``).

Each subcommand is a module ``speechlm/agent/commands/<sub>.py`` (dashes become underscores)
with ``add_arguments(parser)`` and ``main(args) -> int``; adding one is one file plus one line
in :data:`SUBCOMMANDS`. Modules that are not installed are left out of the list.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util

# name -> one-line help; the module is speechlm.agent.commands.<name with _ for ->
SUBCOMMANDS: dict[str, str] = {
    "generate": "generate episodes (requests, initial states, expected calls and states) from intent templates",
    "import-slurp": "import SLURP-format annotation files as episodes",
    "synth": "synthesize the spoken versions of episodes (several engines and voices, optional noise)",
    "hear": "the episodes as Whisper hears them (the cascade's transcripts) to train a parser on what it will read",
    "datadir": "episodes with audio -> Kaldi data dirs (one utterance per assistant step) for the agent tasks",
    "train-lm": "a word n-gram model of the requests that re-ranks Whisper's hypotheses in the cascade",
    "run": "run the agent loop (e2e or cascade) over episodes: predictions.jsonl and final states",
    "chat": "talk to a model by hand: wav paths or typed text, one turn a line",
    "score": "score an agent run against its episodes: task success, SLU-F1, latency -> RESULTS.md",
    "forecast": "teacher-forced token statistics per checkpoint next to task success, and their rank correlation",
}


def module_name(sub: str) -> str:
    return "speechlm.agent.commands." + sub.replace("-", "_")


def available() -> dict[str, str]:
    return {n: h for n, h in SUBCOMMANDS.items() if importlib.util.find_spec(module_name(n)) is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", required=True)
    for name, help_ in available().items():
        sp = subs.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        importlib.import_module(module_name(name)).add_arguments(sp)


def main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(module_name(args.agent_command)).main(args) or 0)
