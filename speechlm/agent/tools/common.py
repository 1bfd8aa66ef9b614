"""Helpers the home tools share: the clock, spoken dates and times, matching a value to a table."""
from __future__ import annotations

import datetime as dt
import difflib
import re
from typing import Iterable

from speechlm.agent.spoken import format_date, format_time, from_hhmm, parse_date, parse_duration, parse_iso, parse_time
from speechlm.agent.tools.base import ToolError

FILLERS = re.compile(r"^(the|my|a|an|our|some|this|that) ")


def now(state: dict) -> dt.datetime:
    return parse_iso(state["clock"]["now"])


def today(state: dict) -> dt.date:
    return now(state).date()


def get_date(state: dict, args: dict, key: str = "date", default: dt.date | None = None) -> dt.date | None:
    """The date in ``args[key]`` (spoken), ``default`` when absent; ToolError when unreadable."""
    if key not in args:
        return default
    try:
        return parse_date(args[key], today(state))
    except ValueError:
        raise ToolError(f"cannot read the {key} {args[key]}; say a day like tomorrow or friday", "invalid", key) from None


RELATIVE_RE = re.compile(r"(?:in )?(.+?)(?: from now)?")  # a duration from the clock: "in twenty minutes"


def get_time(args: dict, key: str = "time", required: bool = False, tool: str = "",
             state: dict | None = None) -> int | None:
    """Minutes after midnight from ``args[key]`` (with ``timeofday`` deciding am/pm); with
    ``state``, a time relative to the clock too (``in twenty minutes``, ``an hour``)."""
    if key not in args:
        if required:
            raise ToolError(f"missing argument {key}{' for ' + tool if tool else ''}", "missing", key)
        return None
    try:
        return parse_time(args[key], args.get("timeofday"))
    except ValueError:
        pass
    m = RELATIVE_RE.fullmatch(" ".join(args[key].lower().split()))
    if state is not None and m:
        try:
            minutes = parse_duration(m.group(1))
        except ValueError:
            minutes = None
        if minutes is not None:
            t = now(state)
            return (t.hour * 60 + t.minute + minutes) % 1440
    raise ToolError(f"cannot read the {key} {args[key]}; say a time like seven thirty am", "invalid", key)


def need(args: dict, key: str, tool: str, action: str = "") -> str:
    """``args[key]`` or a ToolError saying it is missing."""
    if key not in args:
        raise ToolError(f"missing argument {key} for {tool}{' ' + action if action else ''}", "missing", key)
    return args[key]


def say_date(state: dict, iso: str) -> str:
    return format_date(dt.date.fromisoformat(iso), today(state))


def say_time(hhmm: str) -> str:
    return format_time(from_hhmm(hhmm))


def clean(value: str) -> str:
    """Lower case without leading articles/possessives and trailing 's' plural of simple words."""
    v = " ".join(value.lower().replace("’", "'").split())
    while FILLERS.match(v):
        v = FILLERS.sub("", v, count=1)
    return v


def match(value: str, choices: Iterable[str], what: str, arg: str) -> str:
    """The choice ``value`` names (exact, without articles, singular/plural, or contained words);
    ToolError ``not_found`` listing the choices otherwise."""
    choices = list(choices)
    v = clean(value)
    candidates = [v, v.rstrip("s"), v + "s", v.removesuffix(" list"), v.removesuffix("es")]
    for c in candidates:
        if c in choices:
            return c
    contained = [c for c in choices if c and (re.search(rf"\b{re.escape(c)}\b", v) or re.search(rf"\b{re.escape(v)}\b", c))]
    if len(contained) == 1:
        return contained[0]
    close = difflib.get_close_matches(v, choices, n=1, cutoff=0.8)
    if close:
        return close[0]
    shown = ", ".join(choices[:8]) + (" ..." if len(choices) > 8 else "")
    raise ToolError(f"no {what} called {value}; known {what}s: {shown}", "not_found", arg)


def listing(items: list[str], empty: str) -> str:
    """``a, b and c`` (or ``empty``)."""
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def count_words(n: int, noun: str) -> str:
    from speechlm.agent.spoken import number_to_words

    return f"{'no' if n == 0 else number_to_words(n)} {noun}{'' if n == 1 else 's'}"
