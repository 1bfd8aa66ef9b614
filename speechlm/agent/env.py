"""Environments: a JSON-serialisable state that tools read and change, saved, compared and reset.

``Environment.execute`` validates a call against the tool's schema and runs the tool on a deep
copy of the state; only a call that succeeds replaces the state, so a ToolError (bad argument,
offline device, missing item) never leaves a half-changed state behind.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Union

from speechlm.agent.calls import Call, format_result, parse_call
from speechlm.agent.tools import ToolError, get_tool, validate_args
from speechlm.registry import Registry
from speechlm.utils.fileio import write_json

# name -> factory(seed) of an initial state
ENVIRONMENTS: Registry[Callable[..., dict]] = Registry("environment")


def default_state(seed: int | None = None) -> dict:
    """The home-assistant environment's initial state (``seed`` varies its data deterministically)."""
    from speechlm.agent.home import home_state

    return home_state(seed)


ENVIRONMENTS.register("home")(default_state)


def _as_call(call: Union[Call, dict, str]) -> Call:
    if isinstance(call, Call):
        return call
    if isinstance(call, dict):
        return Call.from_dict(call)
    if isinstance(call, str):
        return parse_call(call)
    raise TypeError(f"a call is a Call, a {{'name', 'args'}} dict or call text, got {type(call).__name__}")


class Environment:
    """A state plus the tools that act on it."""

    def __init__(self, state: dict | None = None, name: str = "home") -> None:
        self.name = name
        self._factory = ENVIRONMENTS.get(name)
        self.state: dict = {}
        self.reset(state)

    def reset(self, state: dict | None = None) -> None:
        """Start again from ``state`` (deep-copied) or, when None, the environment's default state."""
        self.state = copy.deepcopy(state) if state is not None else self._factory()

    def snapshot(self) -> dict:
        """A deep copy of the current state."""
        return copy.deepcopy(self.state)

    def execute(self, call: Union[Call, dict, str]) -> dict:
        """Validate and run one call; returns the tool's result dict, raises ToolError (state unchanged)."""
        call = _as_call(call)
        tool = get_tool(call.name)
        validate_args(tool, call.args)
        work = copy.deepcopy(self.state)
        result = tool.fn(work, dict(call.args))
        self.state = work
        return result

    def respond(self, call: Union[Call, dict, str]) -> tuple[bool, str]:
        """Run a call and return ``(ok, result text)`` as the model reads it (``ok: ...`` /
        ``error: ...``); call text that does not parse is an error result too."""
        try:
            return True, format_result(self.execute(call))
        except ToolError as e:
            return False, format_result(e)
        except ValueError as e:  # CallSyntaxError or a malformed call dict
            return False, format_result(ToolError(f"cannot read the call: {e}", "invalid"))

    def set_clock(self, now: str) -> None:
        """Set the clock to an ISO time ``YYYY-MM-DDTHH:MM``."""
        from speechlm.agent.spoken import parse_iso

        parse_iso(now)  # validates
        self.state["clock"]["now"] = now

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"environment": self.name, "state": self.state})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Environment":
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict) or set(d) != {"environment", "state"}:
            raise ValueError(f"{path}: an environment file holds {{'environment': name, 'state': {{...}}}}")
        return cls(d["state"], d["environment"])

    @staticmethod
    def diff(a: dict, b: dict) -> list[str]:
        """Readable differences between two states (``path: old -> new``), empty when equal."""
        out: list[str] = []
        _diff(a, b, "", out)
        return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p}: added {json.dumps(b[k], ensure_ascii=False)}")
            elif k not in b:
                out.append(f"{p}: removed {json.dumps(a[k], ensure_ascii=False)}")
            else:
                _diff(a[k], b[k], p, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path or '.'}: {json.dumps(a, ensure_ascii=False)} -> {json.dumps(b, ensure_ascii=False)}")


def make_env(name: str = "home", state: dict | None = None) -> Environment:
    """An environment by registered name, starting from ``state`` or its default state."""
    return Environment(state, name)
