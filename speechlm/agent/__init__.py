"""Voice agents: tools over an environment state, the call/result text formats, episodes.

Main entry points (see docs/interfaces.md, "Agent episodes and call formats"):
``speechlm.agent.calls`` (Call, format_call, parse_call, format_result, format_turn, parse_turn,
render_history), ``speechlm.agent.tools`` (Tool, ToolError, TOOLS, validate_args),
``speechlm.agent.env`` (Environment, make_env, default_state), ``speechlm.agent.intents``
(SCENARIOS, INTENTS, intent_to_call, call_to_intent) and ``speechlm.agent.episodes``
(Episode, read_episodes, write_episodes, success).
"""
from speechlm.agent.calls import (CallSyntaxError, Call, format_call, format_result, format_turn, parse_call,
                                  parse_history, parse_result, parse_turn, render_history)
from speechlm.agent.episodes import Episode, read_episodes, success, write_episodes

__all__ = [
    "Call", "CallSyntaxError", "Episode", "format_call", "format_result", "format_turn", "parse_call",
    "parse_history", "parse_result", "parse_turn", "read_episodes", "render_history", "success", "write_episodes",
]
