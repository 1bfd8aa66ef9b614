"""What a tool is: a name, a JSON-schema of its arguments, and a function over an environment state.

A tool function ``fn(state, args) -> dict`` may change ``state`` in place and returns a result
dict whose ``text`` is the short line the model reads back (``alarm set for seven am``); the
other keys are structured data for scoring and tests. Bad arguments, an offline device or a
missing item raise :class:`ToolError` with a message the model can act on. The environment
(``speechlm/agent/env.py``) runs tools on a copy of the state, so an error never leaves a
half-changed state behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import difflib

from speechlm.registry import Registry


class ToolError(Exception):
    """A tool refused a call: missing/unknown/invalid argument, device offline, item not found.

    ``kind`` is one of ``missing``, ``unknown``, ``invalid``, ``offline``, ``not_found``,
    ``unknown_tool``; ``arg`` names the argument concerned (or None).
    """

    def __init__(self, message: str, kind: str = "invalid", arg: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.arg = arg


@dataclass
class Tool:
    """A tool: ``parameters`` is a JSON schema object (``properties``, ``required``,
    ``additionalProperties: false``); every argument is a string of spoken words."""

    name: str
    description: str
    parameters: dict
    fn: Callable[[dict, dict], dict]
    intents: dict[str, dict] = field(default_factory=dict)  # intent -> fixed args ({} when none)

    def __call__(self, state: dict, args: dict) -> dict:
        validate_args(self, args)
        return self.fn(state, args)

    @property
    def arg_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def signature(self) -> str:
        """One line for help texts: ``lights action=on|off|... ; [house_place] ; [color_type] ...``."""
        props, required = self.parameters.get("properties", {}), set(self.parameters.get("required", []))
        parts = [f"{k}={'|'.join(v['enum'])}" if "enum" in v else (k if k in required else f"[{k}]") for k, v in props.items()]
        return self.name + (" " + " ; ".join(parts) if parts else "")


TOOLS: Registry[Tool] = Registry("tool")


def schema(properties: dict[str, dict], required: Iterable[str] = ()) -> dict:
    """A JSON schema object of string arguments (values are spoken words)."""
    props = {k: {"type": "string", **v} for k, v in properties.items()}
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def slots(*names: str) -> dict[str, dict]:
    """Free-text string properties named after SLURP slot types."""
    return {n: {} for n in names}


def register_tool(name: str, description: str, properties: dict[str, dict], required: Iterable[str] = (),
                  intents: dict[str, dict] | None = None) -> Callable:
    """Decorator: register ``fn`` as the tool ``name``; ``intents`` maps each SLURP intent served
    by this tool to its fixed arguments (e.g. ``{"iot_hue_lightoff": {"action": "off"}}``)."""

    def deco(fn: Callable[[dict, dict], dict]) -> Callable[[dict, dict], dict]:
        TOOLS.register(name)(Tool(name, description, schema(properties, required), fn, dict(intents or {})))
        return fn

    return deco


def _hint(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean x)`` in the plain words the model reads, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]})" if close else ""


def validate_args(tool: Tool, args: dict) -> None:
    """Raise :class:`ToolError` naming the argument when ``args`` break ``tool``'s schema."""
    if not isinstance(args, dict):
        raise ToolError(f"{tool.name}: arguments must be name=value pairs", "invalid")
    props = tool.parameters.get("properties", {})
    for key in args:
        if key not in props:
            raise ToolError(f"unknown argument {key} for {tool.name}{_hint(key, props)}; "
                            f"it takes {', '.join(props) or 'no arguments'}", "unknown", key)
    for key in tool.parameters.get("required", []):
        if key not in args or not str(args[key]).strip():
            raise ToolError(f"missing argument {key} for {tool.name}", "missing", key)
    for key, value in args.items():
        if not isinstance(value, str):
            raise ToolError(f"argument {key} of {tool.name} must be words, got {type(value).__name__}", "invalid", key)
        if not value.strip():
            raise ToolError(f"argument {key} of {tool.name} is empty", "invalid", key)
        enum = props[key].get("enum")
        if enum is not None and value not in enum:
            raise ToolError(f"invalid {key} {value} for {tool.name}; use one of {', '.join(enum)}", "invalid", key)


def get_tool(name: str) -> Tool:
    """The registered tool ``name``, or a ToolError the model can read."""
    if name not in TOOLS:
        raise ToolError(f"unknown tool {name}{_hint(name, TOOLS.names())}", "unknown_tool")
    return TOOLS.get(name)
