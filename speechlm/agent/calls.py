"""The text formats an agent model reads and writes: tool calls, tool results, turns and histories.

Everything is one line of lower-case words, so that a small BPE model trained on lower-case
transcripts can copy slot values from what it heard and the toolkit can parse what it wrote:

    call      set_alarm date = tomorrow ; time = seven thirty am  (args sorted by name)
    result    ok: alarm set for seven thirty am tomorrow          (a tool's success text)
              error: missing argument time                        (a ToolError's message)
    turn      call <call>                                         (the assistant calls a tool)
              say <answer words>                                  (the assistant answers)
    history   user <words> | call <call> | ok: <text> | say <words>     ("none" when empty)

``;`` separates arguments, ``=`` ends an argument name and ``|`` separates history turns, so
none of the three may occur inside a value; values are otherwise free words (numbers spelled
out as spoken: ``seven thirty am``).

Spaces around ``=``: a value then starts a word, so the BPE gives it the same pieces as in the
request it is copied from (``=living`` is ``= li ving``, `` = living`` is ``▁= ▁living``), and
an action value is a word piece instead of letters (``action=up`` was ``action = u p``); see
"What limits the parser" in ``egs/voice_agent/speechlm1/README.md``. :func:`parse_call` reads
both forms, and names split at their underscores (``set _ alarm``, ``device _ type``: how a
WordPiece tokenizer such as a pretrained BERT's decodes them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from speechlm.agent.tools.base import ToolError

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
SPLIT_NAME_RE = re.compile(r"[a-z][a-z0-9_]*(?:\s*_\s*[a-z0-9_]+)*")  # a name, maybe spaced at its '_'
RESERVED = ";=|"
CALL_PREFIX = "call "
ANSWER_PREFIX = "say "
USER_PREFIX = "user "
OK_PREFIX = "ok: "
ERROR_PREFIX = "error: "
TURN_SEP = " | "
EMPTY_HISTORY = "none"


class CallSyntaxError(ValueError):
    """A call or turn text that does not parse; ``pos`` is the character offset of the problem."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        super().__init__(f"{message} at character {pos} of {text!r}")
        self.message = message
        self.text = text
        self.pos = pos


@dataclass
class Call:
    """One tool call: the tool's name and its arguments (argument name -> value words)."""

    name: str
    args: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, d: dict) -> "Call":
        if (not isinstance(d, dict) or set(d) - {"name", "args"} or not isinstance(d.get("name"), str)
                or not isinstance(d.get("args", {}), dict)):
            raise ValueError(f"a call is {{'name': str, 'args': {{str: str}}}}, got {d!r}")
        # values keep their types: validate_args names a value that is not words
        return cls(d["name"], dict(d.get("args") or {}))

    def __str__(self) -> str:
        return format_call(self)


def normalize_words(text: str) -> str:
    """Lower case, one line, single spaces: the form every value and answer takes."""
    return " ".join(str(text).lower().split())


def _check_value(name: str, key: str, value: str) -> str:
    value = normalize_words(value)
    if not value:
        raise ValueError(f"call {name}: argument {key} has an empty value")
    bad = [c for c in RESERVED if c in value]
    if bad:
        raise ValueError(f"call {name}: argument {key}={value!r} contains reserved character {bad[0]!r} "
                         f"(values are words; remove {', '.join(repr(c) for c in RESERVED)})")
    return value


def format_call(call: Call) -> str:
    """``name k1 = v1 ; k2 = v2`` with arguments sorted by name (one canonical text per call)."""
    if not NAME_RE.fullmatch(call.name):
        raise ValueError(f"bad tool name {call.name!r}: lower-case letters, digits and '_' only")
    parts = []
    for key in sorted(call.args):
        if not NAME_RE.fullmatch(key):
            raise ValueError(f"call {call.name}: bad argument name {key!r}")
        parts.append(f"{key} = {_check_value(call.name, key, call.args[key])}")
    return call.name + (" " + " ; ".join(parts) if parts else "")


def _joined(name: str) -> str:
    return re.sub(r"\s*_\s*", "_", name)


def parse_call(text: str) -> Call:
    """Parse ``name k = v ; k = v`` (or ``k=v``); lenient about spaces and case, strict about structure."""
    src = text
    text = text.lower()
    lead = len(text) - len(text.lstrip())
    m = SPLIT_NAME_RE.match(text, lead)
    if not m:
        raise CallSyntaxError("expected a tool name", src, lead)
    name, pos = _joined(m.group(0)), m.end()
    rest = text[pos:]
    args: dict[str, str] = {}
    if rest.strip():
        if not rest[0].isspace():
            raise CallSyntaxError("expected a space after the tool name", src, pos)
        offset = pos
        for chunk in rest.split(";"):
            if "=" not in chunk:
                raise CallSyntaxError("expected name=value", src, offset + len(chunk) - len(chunk.lstrip()))
            key, value = chunk.split("=", 1)
            key_s = _joined(key.strip())
            if not NAME_RE.fullmatch(key_s):
                raise CallSyntaxError(f"bad argument name {key_s!r}", src, offset)
            for c in "|=":  # '=' in a value: a model that forgot the ';' between two arguments
                if c in value:
                    raise CallSyntaxError(f"{c!r} inside a value", src, offset + len(key) + 1 + value.index(c))
            value_s = normalize_words(value)
            if not value_s:
                raise CallSyntaxError(f"argument {key_s} has no value", src, offset + len(key) + 1)
            if key_s in args:
                raise CallSyntaxError(f"argument {key_s} given twice", src, offset)
            args[key_s] = value_s
            offset += len(chunk) + 1
    return Call(name, args)


def format_result(result: Union[dict, ToolError, str]) -> str:
    """``ok: <text>`` for a tool's result dict (its ``text``), ``error: <message>`` for a ToolError."""
    if isinstance(result, ToolError):
        return ERROR_PREFIX + normalize_words(str(result)).replace("|", "/")
    if isinstance(result, str):
        return OK_PREFIX + normalize_words(result).replace("|", "/")
    return OK_PREFIX + normalize_words(result.get("text", "done")).replace("|", "/")


def parse_result(text: str) -> tuple[bool, str]:
    """``(ok, text)`` from a formatted result."""
    text = normalize_words(text)
    if text.startswith(OK_PREFIX.strip()):
        return True, text[len(OK_PREFIX.strip()):].strip()
    if text.startswith(ERROR_PREFIX.strip()):
        return False, text[len(ERROR_PREFIX.strip()):].strip()
    raise CallSyntaxError("a result starts with 'ok:' or 'error:'", text, 0)


def format_answer(text: str) -> str:
    """An answer's words in the one-line form (no '|', which separates history turns)."""
    return normalize_words(text).replace("|", " ").strip()


def format_turn(kind: str, payload: Union[Call, str]) -> str:
    """An assistant turn: ``call <call>`` or ``say <answer>``."""
    if kind == "call":
        if not isinstance(payload, Call):
            raise TypeError(f"a call turn needs a Call, got {type(payload).__name__}")
        return CALL_PREFIX + format_call(payload)
    if kind == "answer":
        return ANSWER_PREFIX + format_answer(str(payload))
    raise ValueError(f"turn kind is 'call' or 'answer', got {kind!r}")


def parse_turn(text: str) -> tuple[str, Union[Call, str]]:
    """``("call", Call)`` or ``("answer", str)`` from an assistant turn's text."""
    stripped = text.lstrip().lower()
    lead = len(text) - len(stripped)
    if stripped.startswith(CALL_PREFIX):
        try:
            return "call", parse_call(stripped[len(CALL_PREFIX):])
        except CallSyntaxError as e:  # report the position in the whole turn
            raise CallSyntaxError(e.message, text, lead + len(CALL_PREFIX) + e.pos) from None
    if stripped.startswith(ANSWER_PREFIX) or stripped.strip() == ANSWER_PREFIX.strip():
        return "answer", format_answer(stripped[len(ANSWER_PREFIX):])
    raise CallSyntaxError("an assistant turn starts with 'call ' or 'say '", text, lead)


def canonical_turn(text: str) -> str:
    """An assistant turn in the canonical form of :func:`format_turn` (e.g. a call written
    ``k=v`` by an older generator becomes ``k = v``); CallSyntaxError when it does not parse."""
    return format_turn(*parse_turn(text))


def render_history(turns: list[dict]) -> str:
    """The one-line history condition: user turns as ``user <words>``, assistant turns in
    their canonical form (:func:`canonical_turn`), tool turns as their result text, joined by
    `` | ``; ``none`` if empty."""
    parts = []
    for i, turn in enumerate(turns):
        role, text = turn.get("role"), normalize_words(turn.get("text", "")).replace("|", "/")
        if role == "user":
            parts.append(USER_PREFIX + text)
        elif role == "assistant":
            parts.append(canonical_turn(text))  # an assistant turn must be a valid call or answer
        elif role == "tool":
            parse_result(text)
            parts.append(text)
        else:
            raise ValueError(f"history turn {i}: role is 'user', 'assistant' or 'tool', got {role!r}")
    return TURN_SEP.join(parts) if parts else EMPTY_HISTORY


def parse_history(text: str) -> list[dict]:
    """Inverse of :func:`render_history`."""
    text = normalize_words(text)
    if text == EMPTY_HISTORY or not text:
        return []
    turns = []
    for part in text.split(TURN_SEP.strip()):
        part = part.strip()
        if part.startswith(USER_PREFIX):
            turns.append({"role": "user", "text": part[len(USER_PREFIX):]})
        elif part.startswith((CALL_PREFIX, ANSWER_PREFIX)) or part == ANSWER_PREFIX.strip():
            turns.append({"role": "assistant", "text": part})
        elif part.startswith((OK_PREFIX.strip(), ERROR_PREFIX.strip())):
            turns.append({"role": "tool", "text": part})
        else:
            raise CallSyntaxError("a history turn starts with 'user', 'call', 'say', 'ok:' or 'error:'", text, text.find(part))
    return turns
