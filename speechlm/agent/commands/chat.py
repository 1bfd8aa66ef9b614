"""speechlm agent chat: talk to a model by hand, one user turn a line (a wav path, or typed words).

Typed words are spoken with espeak-ng for the speech modes (``--mode text`` reads them as they
are). The environment keeps its state from line to line; a line after a request the tools carried
out starts a new dialogue (one after an ask-back or a tool error answers it); an empty line or end
of input stops.
``--mode cascade-whisper`` takes ``agent run``'s Whisper options (a fine-tuned model, speeds, the
word LM), so the voice-agent recipe's best cascade can be tried by hand.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.agent.commands.run import add_whisper_arguments
    from speechlm.agent.loop import MODES

    p.add_argument("--model-dir", required=True, help="packed model dir with the agent tasks")
    p.add_argument("--mode", default="e2e", choices=MODES, help="as in `speechlm agent run`")
    p.add_argument("--state", default=None, help="initial environment state (a JSON file saved by Environment.save)")
    p.add_argument("--max-turns", type=int, default=4, help="assistant steps per user turn")
    p.add_argument("--dialogue-task", default=None,
                   help="the e2e task (default: spoken_dialogue where the model has it, else spoken_dialogue_monologue)")
    p.add_argument("--speak", action="store_true", help="also speak each answer into --wav-dir")
    p.add_argument("--wav-dir", default=None, help="where typed lines' speech and spoken answers go (default: a temp dir)")
    add_whisper_arguments(p)


def main(args: argparse.Namespace) -> int:
    import subprocess

    import speechlm
    from speechlm.agent.commands.run import whisper_options
    from speechlm.agent.env import Environment
    from speechlm.agent.episodes import Episode
    from speechlm.agent.loop import AgentLoop, LoopConfig

    import torch

    torch.set_num_threads(1)  # one user's small decoding steps: one thread is fastest (see agent run --threads)
    pipe = speechlm.load(args.model_dir)
    loop = AgentLoop(pipe, LoopConfig(mode=args.mode, max_turns=args.max_turns, batch_size=1, speak=args.speak,
                                      dialogue_task=args.dialogue_task or "", **whisper_options(args)).validate())
    wav_dir = Path(args.wav_dir or tempfile.mkdtemp(prefix="speechlm-chat-"))
    wav_dir.mkdir(parents=True, exist_ok=True)
    state = Environment.load(args.state).state if args.state else None
    run, shown, shown_bad = None, 0, 0
    out = sys.stdout
    out.write(f"speechlm agent chat ({args.mode}): a wav path or words per line; an empty line ends.\n")
    out.flush()
    for n, line in enumerate(sys.stdin):
        line = line.strip()
        if not line:
            break
        if Path(line).is_file():
            turn = {"text": "", "audio": str(Path(line).resolve())}
        elif args.mode == "text":
            turn = {"text": line, "audio": None}
        else:
            wav = wav_dir / f"user{n:03d}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), line], check=True, capture_output=True)
            turn = {"text": line, "audio": str(wav)}
        if run is not None and run.request_done:  # a new request: a new dialogue in the home as it is
            state, run, shown, shown_bad = run.env.state, None, 0, 0
        if run is None:
            run = loop.start(Episode(id=f"chat-{n}", turns=[turn], initial_state=state))
        else:
            run.ep.turns.append(turn)
            run.user, run.ended = len(run.ep.turns) - 1, None
            loop.begin_user_turn(run)
        wave = 0
        while not run.done:
            loop.step([run], wave)
            wave += 1
        for bad in run.invalid[shown_bad:]:
            out.write(f"  (invalid turn{' after the retry' if bad['retry'] else ', retried'}: {bad['text']!r})\n")
        for h in run.history[shown:]:
            if h["role"] != "user":
                out.write(f"{h['role']}: {h['text']}\n")
        shown, shown_bad = len(run.history), len(run.invalid)
        if run.transcripts and len(run.transcripts) > run.user:
            out.write(f"  (heard: {run.transcripts[run.user]})\n")
        if run.ended != "answer":
            out.write(f"  (no answer: {run.ended})\n")
        elif args.speak:
            loop.speak(run, wav_dir)
            out.write(f"  (spoken: {run.speech})\n")
        out.flush()
    return 0
