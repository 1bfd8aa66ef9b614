"""Tools for voice agents: the Tool type, the TOOLS registry and the home-assistant tool groups.

Adding a tool = one file here that calls ``register_tool`` + one import line below.
"""
from speechlm.agent.tools.base import TOOLS, Tool, ToolError, get_tool, register_tool, schema, validate_args

# the home-assistant tool groups (each registers its tools on import)
from speechlm.agent.tools import comms, devices, info, media, services, timekeeping  # noqa: E402,F401

__all__ = ["TOOLS", "Tool", "ToolError", "get_tool", "register_tool", "schema", "validate_args"]
