"""Episodes: one spoken task each (request, initial state, expected calls, expected state/answer).

Stored as JSONL, one episode per line (documented in docs/interfaces.md, "Agent episodes"):

    {"id": "train-000001", "turns": [{"text": "wake me at seven tomorrow", "audio": "wav/x.wav"}],
     "initial_state": null, "expected_calls": [{"name": "alarm", "args": {...}}],
     "expected_state": {...} | null, "answer_facts": ["seven am"], "intent": "alarm_set",
     "slots": [["time", "seven"], ["date", "tomorrow"]], "kind": "atomic", "split": "train", "meta": {}}

``initial_state: null`` means the home environment's ``default_state()``. ``expected_state`` is
compared on the top-level keys it holds (a full state compares everything; a generator may leave
out parts no call can change, such as the read-only ``world`` tables, to keep files small).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

from speechlm.agent.calls import normalize_words
from speechlm.utils.fileio import atomic_open, iter_jsonl

KINDS = ("atomic", "compositional", "recovery")


@dataclass
class Episode:
    """One task. ``turns`` are the user's turns (turn 0 is the request; later ones answer an
    ask-back in recovery episodes), each ``{"text": str, "audio": str | None}``."""

    id: str
    turns: list[dict]
    initial_state: Optional[dict] = None
    expected_calls: list[dict] = field(default_factory=list)
    expected_state: Optional[dict] = None
    answer_facts: list[str] = field(default_factory=list)
    intent: str = ""
    slots: list[list[str]] = field(default_factory=list)
    kind: str = "atomic"
    split: str = "train"
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The request's words (turn 0)."""
        return self.turns[0]["text"] if self.turns else ""

    @property
    def audio(self) -> Optional[str]:
        return self.turns[0].get("audio") if self.turns else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "episode") -> "Episode":
        """Build and validate; errors name ``where`` (file:line) and the key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: an episode is a JSON object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown episode key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        for key in ("id", "turns"):
            if key not in d:
                raise ValueError(f"{where}: missing episode key {key!r}")
        ep = cls(**d)
        ep.validate(where)
        return ep

    def validate(self, where: str = "episode") -> None:
        """Check types and values; raise ValueError naming ``where`` and the key."""
        w = f"{where} (id {self.id!r})"
        if not isinstance(self.id, str) or not self.id or any(c.isspace() for c in self.id):
            raise ValueError(f"{where}: id must be a non-empty string without spaces, got {self.id!r}")
        if not isinstance(self.turns, list) or not self.turns:
            raise ValueError(f"{w}: turns must be a non-empty list of {{'text', 'audio'}}")
        for i, t in enumerate(self.turns):
            if not isinstance(t, dict) or set(t) - {"text", "audio"} or not isinstance(t.get("text"), str):
                raise ValueError(f"{w}: turns[{i}] must be {{'text': str, 'audio': str | null}}, got {t!r}")
            if t.get("audio") is not None and not isinstance(t["audio"], str):
                raise ValueError(f"{w}: turns[{i}].audio must be a path string or null")
        for key in ("initial_state", "expected_state"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), dict):
                raise ValueError(f"{w}: {key} must be an object or null")
        if not isinstance(self.expected_calls, list):
            raise ValueError(f"{w}: expected_calls must be a list")
        for i, c in enumerate(self.expected_calls):
            if (not isinstance(c, dict) or set(c) - {"name", "args"} or not isinstance(c.get("name"), str)
                    or not isinstance(c.get("args", {}), dict)
                    or not all(isinstance(v, str) for v in c.get("args", {}).values())):
                raise ValueError(f"{w}: expected_calls[{i}] must be {{'name': str, 'args': {{str: str}}}}, got {c!r}")
        if not isinstance(self.answer_facts, list) or not all(isinstance(f, str) for f in self.answer_facts):
            raise ValueError(f"{w}: answer_facts must be a list of strings")
        if not isinstance(self.slots, list) or not all(
                isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in self.slots):
            raise ValueError(f"{w}: slots must be a list of [type, value] string pairs")
        self.slots = [list(s) for s in self.slots]
        if self.kind not in KINDS:
            raise ValueError(f"{w}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.split, str) or not isinstance(self.intent, str):
            raise ValueError(f"{w}: split and intent must be strings")
        if not isinstance(self.meta, dict):
            raise ValueError(f"{w}: meta must be an object")


def read_episodes(path: str | os.PathLike) -> list[Episode]:
    """Read and validate a JSONL file; errors name file:line; duplicate ids are errors."""
    episodes, seen = [], {}
    for where, d in iter_jsonl(path):
        ep = Episode.from_dict(d, where)
        if ep.id in seen:
            raise ValueError(f"{where}: duplicate episode id {ep.id!r} (first on line {seen[ep.id]})")
        seen[ep.id] = where.rsplit(":", 1)[1]
        episodes.append(ep)
    return episodes


def write_episodes(path: str | os.PathLike, episodes: Iterable[Episode]) -> None:
    """Write episodes as JSONL, atomically (validated before anything is written)."""
    episodes = list(episodes)
    for i, ep in enumerate(episodes):
        ep.validate(f"episode {i}")
    with atomic_open(path) as f:
        for ep in episodes:
            f.write(json.dumps(ep.to_dict(), ensure_ascii=False, sort_keys=False) + "\n")


def _plain_words(text: str) -> str:
    """`` words `` without punctuation (apostrophes kept), padded so whole words can be searched."""
    return " " + " ".join("".join(c if c.isalnum() or c == "'" else " " for c in normalize_words(text)).split()) + " "


def fact_in_answer(fact: str, answer: str) -> bool:
    """Whether ``fact`` occurs in ``answer`` as whole words (case, space and punctuation normalised)."""
    return _plain_words(fact) in _plain_words(answer)


def state_matches(expected: Optional[dict], final: dict) -> bool:
    """Whether ``final`` equals ``expected`` on every top-level key ``expected`` holds (None: no check)."""
    if expected is None:
        return True
    return all(k in final and final[k] == v for k, v in expected.items())


def success(episode: Episode, final_state: dict, answer: str) -> bool:
    """Task success: the final state matches ``expected_state`` (when given) and every answer
    fact appears in the answer."""
    return state_matches(episode.expected_state, final_state) and all(
        fact_in_answer(f, answer or "") for f in episode.answer_facts)
