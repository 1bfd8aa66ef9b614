"""Decoding constrained to valid calls: an assistant turn may only be a call the tools accept.

:class:`CallGrammar` holds, for one model's text tokenizer, the token spellings of what a turn may
say (:mod:`speechlm.agent.calls`): ``call <tool> <arg> =`` for every registered tool and argument,
``call <tool>`` on its own, ``say`` (then free words) and, for a model with an inner monologue,
``user`` (free words up to ``|``, then a turn). :class:`CallFollower` walks one row through them
while it decodes (a :class:`~speechlm.infer.follow.Follower`):

- a tool's name and its argument names only as the tools spell them, and no argument twice
  (an unknown tool or argument is a structural error, never the environment's business);
- an argument with a schema enum (``action``) only one of its values;
- another value: any token but ``=``, ``;`` and ``|``; with ``spans`` (the loop's
  ``copy_values``: the token sequences of what the user said and the tools returned) a span of
  one of them, word pieces in their order (no ``yo yo yo ...``, no enum word of another tool);
  for a time, a date or a number (:data:`~speechlm.agent.ground.CLOSED_ARGS`, composed of words
  from here and there: ``half an hour before ten am``) any tokens of ``spans`` and ``closed``, at
  most ``max_value`` of them (no longer than the longest text); with ``typed`` (the loop's
  ``typed_values``: the names of the home the user said, by slot, :mod:`speechlm.agent.known`) a
  value of a slot the user named something of is a span of those names (``where can i find a pub
  in london``: ``business_type`` is ``pub``, never ``london``); at least one token, then `` ; ``
  and the next argument, or the end;
- an inner monologue: any words, then ``|`` and a turn (it may not end before); with ``heard``
  (the loop's ``hear: asr``) exactly those tokens, the words the model's ASR task heard;
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

from speechlm.agent.calls import ANSWER_PREFIX, CALL_PREFIX, TURN_SEP, USER_PREFIX
from speechlm.agent.ground import CLOSED_ARGS
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
        self.reserved = reserved
        self.words = [i for i in range(n_tokens) if i not in reserved]  # what a free value may hold
        self.any = list(range(n_tokens))
        self.args: dict[str, dict[str, list[int]]] = {}  # tool -> arg -> tokens of "<arg> ="
        self.enums: dict[tuple[str, str], Node] = {}  # (tool, arg) -> trie of its values

        def after(before: str, text: str) -> list[int]:
            """The tokens of ``text`` where it follows ``before`` (a char tokenizer's space included)."""
            full, pre = [int(t) for t in encode(before + text)], [int(t) for t in encode(before)]
            return full[len(pre):] if full[: len(pre)] == pre else [int(t) for t in encode(text.strip())]

        self._encode = encode
        # a char tokenizer spells " ;" with a space first: it may end a copied value anywhere
        lead = after("a", " ;")[:1]
        self.sep_lead = [t for t in lead if t not in self.semicolons]
        self._say = [int(t) for t in encode(ANSWER_PREFIX + "a")][: -len(encode("a"))]  # "say " as a head spells it
        self._answers: dict[str, list[int]] = {}  # answer text -> its tokens after "say"
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

    def follower(self, spans: list[list[int]] | None = None, closed: Iterable[int] = (), max_value: int | None = None,
                 answers: Node | None = None, heard: list[int] | None = None,
                 typed: dict[str, list[list[int]]] | None = None) -> "CallFollower":
        """A fresh rule for one row. ``spans``: token sequences (:meth:`value_tokens`) a free value
        is a span of, or, for an argument of ``CLOSED_ARGS``, holds any tokens of, with ``closed``
        too, at most ``max_value`` of them (None: values are free); ``answers``: the only answers
        it may give (:meth:`answer_trie`; None: any words); ``heard``: the row's inner monologue,
        as :meth:`heard_tokens` spells it (None: the model writes its own); ``typed``: argument
        name -> the token sequences its value is a span of instead (with ``spans`` only)."""
        bag = None if spans is None else sorted({t for seq in spans for t in seq} | set(closed))
        return CallFollower(self, spans, bag, max_value, answers, heard, typed)

    def heard_tokens(self, words: str) -> list[int]:
        """The tokens of an inner monologue ``user <words> |`` as a turn's target starts with it."""
        return [int(t) for t in self._encode(f"{USER_PREFIX}{words}{TURN_SEP.rstrip()}")]

    def value_tokens(self, text: str) -> list[int]:
        """The tokens of ``text`` where a value spells it (after `` = ``)."""
        full, pre = [int(t) for t in self._encode("a = " + text)], [int(t) for t in self._encode("a =")]
        return full[len(pre):] if full[: len(pre)] == pre else [int(t) for t in self._encode(text)]

    def answer_tokens(self, text: str) -> list[int]:
        """The tokens of ``text`` where it follows ``say`` (kept: the questions back and most results
        come again at every step)."""
        if text not in self._answers:
            if len(self._answers) >= 50_000:  # a long-running server: start over rather than grow
                self._answers.clear()
            n = len(self._say)
            full = [int(t) for t in self._encode(ANSWER_PREFIX + text)]
            self._answers[text] = full[n:] if full[:n] == self._say else [int(t) for t in self._encode(text)]
        return self._answers[text]

    def answer_trie(self, texts: Iterable[str]) -> Node:
        """The tokens of each of ``texts`` where it follows ``say``, as a trie."""
        node = Node()
        for text in texts:
            node.add(self.answer_tokens(text), ("answer", text))
        return node

    def arg_trie(self, tool: str, used: set[str]) -> Node:
        node = Node()
        for arg, toks in self.args[tool].items():
            if arg not in used:
                node.add(toks, ("arg", tool, arg))
        return node


class CallFollower(Follower):
    """One row's walk through a :class:`CallGrammar` (see the module docstring)."""

    def __init__(self, grammar: CallGrammar, spans: list[list[int]] | None = None, bag: list[int] | None = None,
                 max_value: int | None = None, answers: Node | None = None, heard: list[int] | None = None,
                 typed: dict[str, list[list[int]]] | None = None) -> None:
        self.grammar, self.spans, self.bag, self.max_value, self.answers = grammar, spans, bag, max_value, answers
        self.heard, self.n_heard = heard, 0
        # argument -> (the sequences its value is a span of, token -> where it occurs in them); None: any argument's
        self.span_sets = {arg: (seqs, self._starts(seqs)) for arg, seqs in (typed or {}).items() if seqs}
        self.span_sets[None] = (spans, self._starts(spans or ()))
        self.starts = self.span_sets[None][1]  # those of the current value
        self.in_span = False  # the current value is a span of ``spans`` (else: of the bag, or free)
        self.at: list[tuple[int, int]] = []  # where the current value's last token is in spans
        # heard (forced) | head | args | enum | value | free (an answer) | answer (one of answers) | monologue |
        # off (left the rule)
        self.phase = "heard" if heard else "head"
        self.node: Node | None = grammar.head
        self.tool: str | None = None
        self.used: set[str] = set()
        self.n_value = 0  # tokens of the current free value

    def __deepcopy__(self, memo: dict) -> "CallFollower":
        # every sample of a prompt walks on its own; the tries are shared (built once)
        out = copy.copy(self)
        out.used = set(self.used)
        return out

    def _starts(self, seqs: Iterable[list[int]]) -> dict[int, list[tuple[int, int]]]:
        starts: dict[int, list[tuple[int, int]]] = {}
        for i, seq in enumerate(seqs):
            for p, t in enumerate(seq):
                if t not in self.grammar.reserved:
                    starts.setdefault(t, []).append((i, p))
        return starts

    def applies(self, tokenizer: str, stream: int) -> bool:
        return tokenizer == self.grammar.tokenizer and stream == 0

    def more_args(self) -> bool:
        return bool(self.tool) and len(self.used) < len(self.grammar.args[self.tool])

    def allowed(self) -> list[int] | None:
        semis = self.grammar.semicolons
        if self.phase == "heard":
            return [self.heard[self.n_heard]]
        if self.phase == "answer":
            return list(self.node.next)  # empty at the end of the longest option: the row ends
        if self.phase in ("head", "args", "enum"):
            out = [t for t in self.node.next if self.more_args() or t not in semis]
            return out if out or self.may_end() else None  # never a row without a choice
        if self.phase == "value":
            more = sorted(semis) if self.n_value and self.more_args() else []
            if self.in_span:
                if not self.n_value:
                    return list(self.starts)
                nxt = {self.spans[i][p + 1] for i, p in self.at if p + 1 < len(self.spans[i])}
                return sorted((nxt | set(self.grammar.sep_lead)) - self.grammar.reserved) + more
            if self.max_value is not None and self.n_value >= self.max_value:
                return more  # the value is as long as it may be: the next argument or the end
            words = self.grammar.words if self.bag is None else [t for t in self.bag if t not in semis]
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
        return self.phase not in ("args", "monologue", "heard")  # a monologue goes on to a turn

    def observe(self, value: int) -> None:
        g = self.grammar
        if self.phase == "heard":
            self.n_heard += 1
            if self.n_heard == len(self.heard):
                self.phase, self.node = "head", g.resume
            return
        if self.phase == "monologue":
            if value in g.pipes:
                self.phase, self.node = "head", g.resume
            return
        if self.phase in ("enum", "value") and value in g.semicolons:
            self.phase, self.node = "args", g.arg_trie(self.tool, self.used)
            return
        if self.phase == "value":
            self.n_value += 1
            if self.in_span:
                self.at = (list(self.starts.get(value, ())) if self.n_value == 1 else
                           [(i, p + 1) for i, p in self.at
                            if p + 1 < len(self.spans[i]) and self.spans[i][p + 1] == value])
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
            self.in_span = self.span_sets[None][0] is not None and arg not in CLOSED_ARGS
            if self.in_span:
                self.spans, self.starts = self.span_sets.get(arg, self.span_sets[None])
            trie = g.enums.get((self.tool, arg))
            self.phase, self.node, self.n_value = ("enum", trie, 0) if trie is not None else ("value", None, 0)


__all__ = ["CallGrammar", "CallFollower", "Node"]
