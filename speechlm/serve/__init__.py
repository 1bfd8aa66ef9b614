"""Serving a packed model: an OpenAI-compatible HTTP server (``speechlm serve``), the request
batching scheduler, live audio over a WebSocket and a browser demo page.

- :mod:`speechlm.serve.app`: ``create_app(model_dir, ...)``, the endpoints, :class:`Limits`;
- :mod:`speechlm.serve.agent_session`: sessions of the voice agent, :func:`run_agent_turn`;
- :mod:`speechlm.serve.openai_format`: the OpenAI JSON shapes and errors;
- :mod:`speechlm.serve.audio_io`: uploaded audio in, streamed WAV/PCM out;
- :mod:`speechlm.serve.asgi`: the API-key and body-size guard, disconnect-aware waiting;
- :mod:`speechlm.serve.scheduler`: :class:`BatchScheduler` (concurrent requests share batches);
- :mod:`speechlm.serve.realtime`: the ``/v1/realtime`` WebSocket and the demo page.

Names are imported lazily so that ``import speechlm.serve.scheduler`` does not need FastAPI.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"create_app": "app", "Limits": "app", "ServerState": "app", "run_agent_turn": "agent_session",
         "BatchScheduler": "scheduler"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
