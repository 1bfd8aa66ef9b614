"""Decoding constrained to valid calls: an assistant turn may only be a call the tools accept.

:class:`CallGrammar` holds, for one model's text tokenizer, the token spellings of what a turn may
say (:mod:`speechlm.agent.calls`): ``call <tool> <arg> =`` for every registered tool and argument,
``call <tool>`` on its own, ``say`` (then free words) and, for a model with an inner monologue,
``user`` (free words up to ``|``, then a turn). :class:`CallFollower` walks one row through them
while it decodes (a :class:`~speechlm.infer.follow.Follower`):

- a tool's name and its argument names only as the tools spell them, and no argument twice
  (an unknown tool or argument is a structural error, never the environment's business);
- an argument with a schema enum (``action``) only one of its values;
- another value: any token but ``=``, ``;`` and ``|``, or with ``inside`` (the loop's
  ``copy_values``) only those tokens, at least one and at most ``max_value`` (a span of what was
  said or returned is no longer than the longest of those texts: a runaway ``yo yo yo ...`` ends
  there), then `` ; `` and the next argument, or the end;
- an inner monologue: any words, then ``|`` and a turn (it may not end before);
- with ``answers`` (the loop's ``valid_answers``), an answer only one of those texts
  (:mod:`speechlm.agent.answers`), else free words.

A missing required argument stays possible: the environment answers it with an error the model
can act on (ask back), as the recovery episodes teach. Spellings are the tokenizer's own tokens
of the canonical texts (``format_call``), the pieces the model was trained on.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from speechlm.agent.calls import ANSWER_PREFIX, CALL_PREFIX, USER_PREFIX
from speechlm.infer.follow import Follower


@dataclass
class Node:
    """A token trie node: ``next`` token -> node; ``tag`` says what a path ending here spelled."""

    next: dict[int, "Node"] = field(default_factory=dict)
    tag: tuple | None = None

    def add(self, tokens: Iterable[int], tag: tuple) -> None:
        node = self
        for t in tokens:
            node = node.next.setdefault(int(t), Node())
        node.tag = tag


class CallGrammar:
    """The token tries of valid turns for one tokenizer (``encode(text) -> local ids``); built once
    per decoder, shared by every row's :class:`CallFollower`."""

    def __init__(self, tokenizer: str, encode: Callable[[str], list[int]], n_tokens: int, tools: Iterable,
                 marks: dict[str, Iterable[int]], monologue: bool = False) -> None:
        """``n_tokens``: the tokenizer's local ids; ``marks``: the ids that hold each of ``=``, ``;``
        and ``|`` where a call writes them."""
        self.tokenizer = tokenizer
        self.semicolons, self.pipes = frozenset(marks[";"]), frozenset(marks["|"])
        reserved = self.semicolons | self.pipes | frozenset(marks["="])
        self.words = [i for i in range(n_tokens) if i not in reserved]  # what a free value may hold
        self.any = list(range(n_tokens))
        self.args: dict[str, dict[str, list[int]]] = {}  # tool -> arg -> tokens of "<arg> ="
        self.enums: dict[tuple[str, str], Node] = {}  # (tool, arg) -> trie of its values

        def after(before: str, text: str) -> list[int]:
            """The tokens of ``text`` where it follows ``before`` (a char tokenizer's space included)."""
            full, pre = [int(t) for t in encode(before + text)], [int(t) for t in encode(before)]
            return full[len(pre):] if full[: len(pre)] == pre else [int(t) for t in encode(text.strip())]

        self._encode = encode
        self._say = [int(t) for t in encode(ANSWER_PREFIX + "a")][: -len(encode("a"))]  # "say " as a head spells it
        tools = list(tools)

        def heads(spell: Callable[[str], list[int]]) -> Node:
            node = Node()
            for tool in tools:
                node.add(spell(CALL_PREFIX + tool.name), ("call", tool.name))
                for arg in tool.parameters.get("properties", {}):
                    node.add(spell(f"{CALL_PREFIX}{tool.name} {arg} ="), ("arg", tool.name, arg))
            # "say " up to its words (a char tokenizer's space included)
            node.add(spell(ANSWER_PREFIX + "a")[: -len(encode("a"))], ("say",))
            return node

        self.head = heads(lambda text: [int(t) for t in encode(text)])  # up to the first argument's '='
        self.resume = self.head  # the turn after an inner monologue's '|'
        if monologue:
            self.head.add(encode(USER_PREFIX.strip()), ("user",))
            self.resume = heads(lambda text: after(USER_PREFIX + "a |", " " + text))
        for tool in tools:
            self.args[tool.name] = {}
            for arg, spec in tool.parameters.get("properties", {}).items():
                self.args[tool.name][arg] = after("a ;", f" {arg} =")
                if "enum" in spec:
                    trie = self.enums[(tool.name, arg)] = Node()
                    for value in spec["enum"]:
                        trie.add(after(f"{arg} =", f" {value}"), ("value",))
                        trie.add(after(f"{arg} =", f" {value} ;"), ("next",))  # up to the next argument

    def follower(self, inside: Iterable[int] | None = None, max_value: int | None = None,
                 answers: Node | None = None) -> "CallFollower":
        """A fresh rule for one row; ``inside``: the only tokens a free value may hold (None: any);
        ``max_value``: the most tokens it may hold (None: no limit); ``answers``: the only answers
        it may give (:meth:`answer_trie`; None: any words)."""
        return CallFollower(self, None if inside is None else sorted(set(inside)), max_value, answers)

    def answer_trie(self, texts: Iterable[str]) -> Node:
        """The tokens of each of ``texts`` where it follows ``say``, as a trie."""
        node, n = Node(), len(self._say)
        for text in texts:
            full = [int(t) for t in self._encode(ANSWER_PREFIX + text)]
            node.add(full[n:] if full[:n] == self._say else [int(t) for t in self._encode(text)], ("answer", text))
        return node

    def arg_trie(self, tool: str, used: set[str]) -> Node:
        node = Node()
        for arg, toks in self.args[tool].items():
            if arg not in used:
                node.add(toks, ("arg", tool, arg))
        return node


class CallFollower(Follower):
    """One row's walk through a :class:`CallGrammar` (see the module docstring)."""

    def __init__(self, grammar: CallGrammar, inside: list[int] | None, max_value: int | None = None,
                 answers: Node | None = None) -> None:
        self.grammar, self.inside, self.max_value, self.answers = grammar, inside, max_value, answers
        # head | args | enum | value | free (an answer) | answer (one of answers) | monologue | off (left the rule)
        self.phase = "head"
        self.node: Node | None = grammar.head
        self.tool: str | None = None
        self.used: set[str] = set()
        self.n_value = 0  # tokens of the current free value

    def __deepcopy__(self, memo: dict) -> "CallFollower":
        # every sample of a prompt walks on its own; the tries are shared (built once)
        out = copy.copy(self)
        out.used = set(self.used)
        return out

    def applies(self, tokenizer: str, stream: int) -> bool:
        return tokenizer == self.grammar.tokenizer and stream == 0

    def more_args(self) -> bool:
        return bool(self.tool) and len(self.used) < len(self.grammar.args[self.tool])

    def allowed(self) -> list[int] | None:
        semis = self.grammar.semicolons
        if self.phase == "answer":
            return list(self.node.next)  # empty at the end of the longest option: the row ends
        if self.phase in ("head", "args", "enum"):
            out = [t for t in self.node.next if self.more_args() or t not in semis]
            return out if out or self.may_end() else None  # never a row without a choice
        if self.phase == "value":
            more = sorted(semis) if self.n_value and self.more_args() else []
            if self.max_value is not None and self.n_value >= self.max_value:
                return more  # the value is as long as it may be: the next argument or the end
            words = self.grammar.words if self.inside is None else [t for t in self.inside if t not in semis]
            return words + more
        return self.grammar.any if self.phase == "monologue" else None

    def may_end(self) -> bool:
        if self.phase == "head":
            return self.node.tag is not None and self.node.tag[0] == "call"
        if self.phase == "enum":
            return self.node.tag is not None and self.node.tag[0] == "value"
        if self.phase == "answer":
            return self.node.tag is not None
        if self.phase == "value":
            return self.n_value > 0
        return self.phase not in ("args", "monologue")  # a monologue goes on to a turn

    def observe(self, value: int) -> None:
        g = self.grammar
        if self.phase == "monologue":
            if value in g.pipes:
                self.phase, self.node = "head", g.resume
            return
        if self.phase in ("enum", "value") and value in g.semicolons:
            self.phase, self.node = "args", g.arg_trie(self.tool, self.used)
            return
        if self.phase == "value":
            self.n_value += 1
            return
        if self.phase == "answer":
            self.node = self.node.next.get(value)
            if self.node is None:
                self.phase = "off"
            return
        if self.phase not in ("head", "args", "enum"):
            return
        node = self.node.next.get(value)
        if node is None:  # a token the rule did not offer (a free row): stop constraining
            self.phase = "off"
            return
        self.node = node
        tag = node.tag
        if self.phase == "enum" or tag is None or (tag[0] == "call" and node.next):
            return
        if tag[0] == "say":
            self.phase, self.node = ("free", None) if self.answers is None else ("answer", self.answers)
        elif tag[0] == "user":
            self.phase = "monologue"
        elif tag[0] == "arg":
            _, self.tool, arg = tag
            self.used.add(arg)
            trie = g.enums.get((self.tool, arg))
            self.phase, self.node, self.n_value = ("enum", trie, 0) if trie is not None else ("value", None, 0)


__all__ = ["CallGrammar", "CallFollower", "Node"]
