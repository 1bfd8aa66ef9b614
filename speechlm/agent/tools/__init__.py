"""Tools for voice agents: the Tool type, the TOOLS registry and the home-assistant tool groups.

Adding a tool = one file in this package whose function is decorated with ``register_tool``:
every module here is imported when the package is, so its tools register themselves.
"""
import importlib
import pkgutil

from speechlm.agent.tools.base import TOOLS, Tool, ToolError, get_tool, register_tool, schema, validate_args

_HELPERS = {"base", "common"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _HELPERS:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["TOOLS", "Tool", "ToolError", "get_tool", "register_tool", "schema", "validate_args"]
