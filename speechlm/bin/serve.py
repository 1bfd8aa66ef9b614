"""speechlm serve: an OpenAI-compatible HTTP server of a packed model (FastAPI + uvicorn).

    speechlm serve --model-dir exp/agent/packed            # http://127.0.0.1:8000
    curl -s localhost:8000/v1/audio/transcriptions -F file=@hello.wav -F model=x

Binds 127.0.0.1 unless ``--host`` says otherwise; with ``--api-key`` (or ``SPEECHLM_API_KEY``) every
request but ``/health`` and the demo page needs ``Authorization: Bearer KEY``. Endpoints and
shapes: docs/interfaces.md, "Serving".
"""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("speechlm.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.agent.loop import MODES

    p.add_argument("--model-dir", required=True, help="packed model dir (speechlm pack)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the server to the network (set --api-key then)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: env SPEECHLM_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="model id reported by /v1/models (default: the dir's name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (1: one at a time)")
    p.add_argument("--window-ms", type=float, default=10.0, help="how long a request waits for batch mates")
    p.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body (413 above)")
    p.add_argument("--max-audio-s", type=float, default=60.0, help="longest uploaded audio (413 above)")
    p.add_argument("--max-streams", type=int, default=4, help="audio streams synthesized at once (others wait)")
    p.add_argument("--max-sessions", type=int, default=256, help="voice-agent sessions kept")
    p.add_argument("--agent-mode", default="e2e", choices=MODES, help="how the agent hears the user")
    p.add_argument("--dialogue-task", default=None,
                   help="the e2e agent's task (default: spoken_dialogue if the model has it, else "
                        "spoken_dialogue_monologue, which also writes down what it heard)")
    p.add_argument("--max-agent-steps", type=int, default=4, help="assistant steps per user turn")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="torch device of the model")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level")


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from speechlm.serve.app import Limits, create_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.max_batch < 1 or args.window_ms < 0:
        raise ValueError("--max-batch must be >= 1 and --window-ms >= 0")
    api_key = args.api_key or os.environ.get("SPEECHLM_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(set --api-key or SPEECHLM_API_KEY)", args.host)
    limits = Limits(max_request_bytes=int(args.max_request_mb * 2**20), max_audio_s=args.max_audio_s,
                    max_streams=args.max_streams, max_sessions=args.max_sessions)
    app = create_app(args.model_dir, api_key=api_key, limits=limits, max_batch=args.max_batch,
                     window_s=args.window_ms / 1000.0, agent_mode=args.agent_mode, dialogue_task=args.dialogue_task,
                     max_agent_steps=args.max_agent_steps, model_name=args.model_name, device=args.device)
    log.info("serving %s on http://%s:%d (API key %s)", args.model_dir, args.host, args.port,
             "required" if api_key else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
