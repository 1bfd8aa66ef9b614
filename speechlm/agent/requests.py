"""Requests of the voice-agent episode generator: phrasing templates (``phrasings/train.yaml``,
author A; ``phrasings/test.yaml``, author B, written independently), slot values (open domains in
``phrasings/values.yaml``, closed ones from the environment state, split by a stable hash so the
test split has values training never sees), and the request text made from them.
:mod:`speechlm.agent.generator` turns requests into episodes.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import logging
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import yaml

from speechlm.agent.calls import Call
from speechlm.agent.intents import INTENTS, intent_to_call, tool_for
from speechlm.agent.spoken import format_time, from_hhmm, number_to_words, parse_time
from speechlm.agent.tools import TOOLS

log = logging.getLogger(__name__)

PHRASING_DIR = Path(__file__).resolve().parent / "phrasings"
SPLITS = ("train", "test")
PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")
DEFAULT_MIX = {"atomic": 0.6, "compositional": 0.25, "recovery": 0.15}
HELDOUT_RATE = 0.5  # default share of test slot values drawn from the held-out values
HELDOUT_VAR: contextvars.ContextVar[float] = contextvars.ContextVar("heldout_rate", default=HELDOUT_RATE)

# ---------------------------------------------------------------------------------------------
# Phrasings.
_PHRASING_KEYS = {"style", "wake_words", "wake_rate", "openers", "opener_rate", "closers", "closer_rate",
                  "connectors", "intents", "underspecified", "answers", "transitions", "corrections", "casual"}
_CASUAL_KEYS = {"rate", "fillers", "drop_words", "front_words"}
TRANSITIONS = ("calendar_alarm", "alarm_remove_first", "transport_calendar")
# what each transition's templates say: the generator fills exactly these (generator.make_transition)
TRANSITION_SLOTS = {"calendar_alarm": {"event_name", "offset"}, "alarm_remove_first": set(),
                    "transport_calendar": {"transport_type", "place_name"}}


@dataclass
class Casual:
    """Casual, noisy variants of a file's own templates (its ``casual:`` section), for robustness
    to phrasings training never sees (in the spirit of EDA, Wei and Zou 2019). A share ``rate`` of
    the requests gets some of: ``drop_words`` left out (never another word: dropping ``off`` or
    ``not`` would change what the request means, and its label would be wrong); one slot
    moved to the front (the ``front_words`` before it dropped); two neighbouring words swapped;
    one or two words inserted (a filler, or a made-up word, so that an unknown word does not derail
    the parser). Slot values are never touched."""

    rate: float
    fillers: list[str]
    drop_words: frozenset[str]
    front_words: frozenset[str]

    def _noise_word(self, rng: random.Random) -> str:
        if rng.random() < 0.4 and self.fillers:
            return rng.choice(self.fillers)
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))

    def apply(self, rng: random.Random, template: str) -> str:
        """``template`` said casually, or as written (with probability ``1 - rate``)."""
        if self.rate <= 0 or rng.random() >= self.rate:
            return template
        words = template.replace(",", " ").split()
        ops = [op for op in ("drop", "front", "swap", "insert") if rng.random() < 0.5]
        ops = ops or [rng.choice(("drop", "front", "swap", "insert"))]
        if "drop" in ops:
            kept = [w for w in words if PLACEHOLDER.search(w) or w not in self.drop_words or rng.random() < 0.3]
            if any(not PLACEHOLDER.search(w) for w in kept):  # something besides the slots is left
                words = kept
        slots = [i for i, w in enumerate(words) if PLACEHOLDER.fullmatch(w)]
        if "front" in ops and slots:
            i = rng.choice(slots)
            j = i
            while j > 0 and words[j - 1] in self.front_words:
                j -= 1
            words = [words[i]] + words[:j] + words[i + 1:]
        if "swap" in ops and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            if not (PLACEHOLDER.search(words[i]) or PLACEHOLDER.search(words[i + 1])):
                words[i], words[i + 1] = words[i + 1], words[i]
        if "insert" in ops:
            for _ in range(rng.randint(1, 2)):
                words.insert(rng.randint(0, len(words)), self._noise_word(rng))
        return " ".join(words)


def _load_casual(where: str, data: object) -> Optional[Casual]:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - _CASUAL_KEYS:
        raise ValueError(f"{where}: casual: expected a mapping with keys {', '.join(sorted(_CASUAL_KEYS))}")
    rate = float(data.get("rate", 0))
    if not 0 <= rate <= 1:
        raise ValueError(f"{where}: casual: rate must be in [0, 1], got {rate}")
    return Casual(rate, [str(f) for f in data.get("fillers") or []], frozenset(data.get("drop_words") or []),
                  frozenset(data.get("front_words") or []))


@dataclass
class Phrasings:
    """One author's phrasings (one YAML file)."""

    path: str
    style: str
    wake_words: list[str]
    wake_rate: float
    openers: list[str]
    opener_rate: float
    closers: list[str]
    closer_rate: float
    connectors: list[str]
    intents: dict[str, list[str]]
    underspecified: dict[str, list[str]] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    transitions: dict[str, list[str]] = field(default_factory=dict)
    corrections: dict[str, dict[str, str]] = field(default_factory=dict)
    casual: Optional["Casual"] = None

    def all_lines(self) -> list[str]:
        """Every phrasing line (templates, transitions, underspecified, answers, wrappers)."""
        out = [t for ts in self.intents.values() for t in ts]
        out += [t for ts in self.underspecified.values() for t in ts]
        out += [t for ts in self.transitions.values() for t in ts]
        out += list(self.answers) + self.wake_words + self.openers + self.closers + self.connectors
        return out + (self.casual.fillers if self.casual else [])


def _check_template(where: str, intent: str, template: str, extra: tuple[str, ...] = ()) -> None:
    if template != template.lower() or re.search(r"\d", template):
        raise ValueError(f"{where}: {intent}: {template!r}: phrasings are lower case with numbers spelled out")
    tool, fixed = tool_for(intent)
    props = TOOLS.get(tool).arg_names
    for slot in PLACEHOLDER.findall(template):
        if slot in extra:
            continue
        if slot not in props or slot in fixed:
            raise ValueError(f"{where}: {intent}: {template!r}: {{{slot}}} is not an argument of tool {tool} "
                             f"(it takes {', '.join(p for p in props if p not in fixed)})")


@lru_cache(maxsize=8)
def load_phrasings(split_or_path: str) -> Phrasings:
    """The phrasings of ``split`` (``train``/``test``) or of a YAML path, validated: every one of
    the 59 intents has templates, every ``{slot}`` is an argument of the intent's tool."""
    path = Path(split_or_path) if split_or_path not in SPLITS else PHRASING_DIR / f"{split_or_path}.yaml"
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    where = str(path)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(data) - _PHRASING_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_PHRASING_KEYS))}")
    intents = data.get("intents") or {}
    missing = [i for i in INTENTS if not intents.get(i)]
    if missing:
        raise ValueError(f"{where}: no phrasings for intent(s) {', '.join(missing)}")
    bad = sorted(set(intents) - set(INTENTS))
    if bad:
        raise ValueError(f"{where}: unknown intent(s) {', '.join(bad)}")
    for section in ("intents", "underspecified"):
        for intent, templates in (data.get(section) or {}).items():
            if intent not in INTENTS:
                raise ValueError(f"{where}: {section}: unknown intent {intent!r}")
            for t in templates:
                _check_template(f"{where}: {section}", intent, str(t))
    for name, templates in (data.get("transitions") or {}).items():
        if name not in TRANSITIONS:
            raise ValueError(f"{where}: transitions: unknown transition {name!r}; valid: {', '.join(TRANSITIONS)}")
        for t in templates:
            want = sorted(TRANSITION_SLOTS[name])
            if sorted(PLACEHOLDER.findall(str(t))) != want:
                need = " and ".join(f"{{{w}}}" for w in want) + " once each, and no other slot" if want else "no slot"
                raise ValueError(f"{where}: transitions: {name}: {t!r} must say {need}")
    ph = Phrasings(
        path=where, style=str(data.get("style", "")), wake_words=list(data.get("wake_words") or []),
        wake_rate=float(data.get("wake_rate", 0)), openers=list(data.get("openers") or []),
        opener_rate=float(data.get("opener_rate", 0)), closers=list(data.get("closers") or []),
        closer_rate=float(data.get("closer_rate", 0)), connectors=list(data.get("connectors") or ["and"]),
        intents={k: [str(t) for t in v] for k, v in intents.items()},
        underspecified={k: [str(t) for t in v] for k, v in (data.get("underspecified") or {}).items()},
        answers=[str(a) for a in data.get("answers") or ["{value}"]],
        transitions={k: [str(t) for t in v] for k, v in (data.get("transitions") or {}).items()},
        corrections={k: dict(v) for k, v in (data.get("corrections") or {}).items()},
        casual=_load_casual(where, data.get("casual")))
    for line in ph.all_lines():
        if line != line.lower() or re.search(r"\d", line):
            raise ValueError(f"{where}: {line!r}: phrasings are lower case with numbers spelled out")
    return ph


HELD_OUT = ("templates", "author")  # how the test split's phrasings are kept from training
# Authors whose phrasings only training reads, in either way of holding out (C: many people's
# fragments and slang; D: roundabout questions, needs and hints; E: learners', children's and
# hurried keywords), each written without reading the other files (phrasings/README.md).
TRAINING_ONLY = ("train_c.yaml", "train_d.yaml", "train_e.yaml")


def _held_part(key: str, lines: list, test: bool) -> list:
    """The test (or training) part of one pooled list: a quarter of it (at least one line, and at
    least one left for training), chosen by a stable hash of ``key`` and the line."""
    lines = list(dict.fromkeys(lines))
    if len(lines) < 2:
        return lines
    ranked = sorted(lines, key=lambda x: hashlib.sha1(f"{key}\0{x}".encode()).hexdigest())
    held = set(ranked[:max(1, len(lines) // 4)])
    return [x for x in lines if (x in held) == test]


@lru_cache(maxsize=4)
def split_phrasings(split: str, held_out: str = "templates") -> Phrasings:
    """The phrasings of ``split``. ``held_out="author"``: each split has its own author's file
    (training author A's full sentences, test author B's chatty fragments: a style training never
    sees). ``"templates"``: both files pooled, and a quarter of every list (each intent's templates,
    wrappers, answers, corrections...) held out for the test split by a stable hash, so the test
    requests use templates training never sees, in styles it does. Either way the training split
    also reads the training-only authors (:data:`TRAINING_ONLY`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out must be one of {', '.join(HELD_OUT)}, got {held_out!r}")
    test = split == "test"
    if held_out == "author":
        ph = load_phrasings(split)
        return ph if test else _for_training(ph)
    a, b = load_phrasings("train"), load_phrasings("test")

    def lists(name: str) -> list[str]:
        return _held_part(name, getattr(a, name) + getattr(b, name), test)

    def per_key(name: str) -> dict[str, list[str]]:
        da, db = getattr(a, name), getattr(b, name)
        out = {k: _held_part(f"{name}/{k}", da.get(k, []) + db.get(k, []), test) for k in dict.fromkeys([*da, *db])}
        return {k: v for k, v in out.items() if v}

    corrections = {}  # {slot: {said: meant}}, held out by what is said
    for slot in dict.fromkeys([*a.corrections, *b.corrections]):
        both = {**a.corrections.get(slot, {}), **b.corrections.get(slot, {})}
        if kept := _held_part(f"corrections/{slot}", list(both), test):
            corrections[slot] = {said: both[said] for said in kept}

    pooled = Phrasings(
        path=f"{a.path} + {b.path} ({split}: {'a quarter' if test else 'three quarters'} of each list)",
        style="both authors, templates held out", wake_words=lists("wake_words"),
        wake_rate=(a.wake_rate + b.wake_rate) / 2, openers=lists("openers"),
        opener_rate=(a.opener_rate + b.opener_rate) / 2, closers=lists("closers"),
        closer_rate=(a.closer_rate + b.closer_rate) / 2, connectors=lists("connectors"),
        intents=per_key("intents"), underspecified=per_key("underspecified"), answers=lists("answers"),
        transitions=per_key("transitions"), corrections=corrections,
        casual=None if test else a.casual)
    return pooled if test else _for_training(pooled)


def _for_training(ph: Phrasings) -> Phrasings:
    """The training split's phrasings from ``ph``: without corrections that lead to a held-out
    value, and with the request templates, transitions, corrections and wrappers of the
    training-only authors (:data:`TRAINING_ONLY`) added: more ways of asking to learn from, none of
    them a test line."""
    def union(mine: dict[str, list[str]], theirs: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k: list(dict.fromkeys(mine.get(k, []) + theirs.get(k, []))) for k in dict.fromkeys([*mine, *theirs])}

    # a correction to a held-out value (author B's `lime: green`) would train on that value
    ph = replace(ph, corrections={slot: kept for slot, table in ph.corrections.items()
                                  if (kept := {said: meant for said, meant in table.items() if not heldout(meant)})})
    for name in TRAINING_ONLY:
        extra = load_phrasings(str(PHRASING_DIR / name))
        ph = replace(ph, path=f"{ph.path} + {extra.path}", intents=union(ph.intents, extra.intents),
                     underspecified=union(ph.underspecified, extra.underspecified),
                     transitions=union(ph.transitions, extra.transitions),
                     corrections={k: {**ph.corrections.get(k, {}), **extra.corrections.get(k, {})}
                                  for k in dict.fromkeys([*ph.corrections, *extra.corrections])},
                     **{k: list(dict.fromkeys(getattr(ph, k) + getattr(extra, k)))
                        for k in ("wake_words", "openers", "closers", "connectors", "answers")})
    return ph


@lru_cache(maxsize=1)
def load_values() -> dict[str, dict[str, list[str]]]:
    path = PHRASING_DIR / "values.yaml"
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for slot, v in data.items():
        if not isinstance(v, dict) or set(v) != {"train", "test"} or set(v["train"]) & set(v["test"]):
            raise ValueError(f"{path}: {slot}: expected disjoint 'train' and 'test' lists")
    return data


# ---------------------------------------------------------------------------------------------
# Slot values.
def heldout(value: str) -> bool:
    """Whether a closed-domain value is held out for the test split (a stable hash, 1 in 4)."""
    return int(hashlib.sha1(value.encode()).hexdigest(), 16) % 4 == 0


def pick_value(rng: random.Random, values: list[str], split: str) -> str:
    """A value for ``split``: training never sees held-out values; the test split draws them
    with probability HELDOUT_RATE (when there are any)."""
    values = sorted(set(values))
    train = [v for v in values if not heldout(v)] or values
    test = [v for v in values if heldout(v)]
    if split == "test" and test and rng.random() < HELDOUT_VAR.get():
        return rng.choice(test)
    return rng.choice(train)


def open_value(rng: random.Random, slot: str, split: str) -> str:
    v = load_values()[slot]
    if split == "test" and rng.random() < HELDOUT_VAR.get():
        return rng.choice(v["test"])
    return rng.choice(v["train"])


TRAIN_MINUTES = (0, 15, 30, 45)
TEST_MINUTES = (10, 20, 40, 50)


def time_value(rng: random.Random, split: str) -> str:
    """A clock time in words (``seven thirty pm``, ``half past six``...); the test split also
    uses minutes training never hears."""
    minutes = TEST_MINUTES if split == "test" and rng.random() < HELDOUT_VAR.get() else TRAIN_MINUTES
    hour, minute = rng.randint(6, 21), rng.choice(minutes)
    form = rng.random()
    if form < 0.15 and minute in (15, 30):
        return f"{'half' if minute == 30 else 'quarter'} past {number_to_words(hour % 12 or 12)} " \
               f"{'in the morning' if hour < 12 else 'in the evening'}"
    return format_time(hour * 60 + minute)


DATES_TRAIN = ["today", "tomorrow", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
DATES_TEST = ["the day after tomorrow", "this weekend", "next monday", "next friday"]


def date_value(rng: random.Random, split: str) -> str:
    if split == "test" and rng.random() < HELDOUT_VAR.get():
        return rng.choice(DATES_TEST)
    return rng.choice(DATES_TRAIN)


def _facts_people(state: dict) -> list[str]:
    return ["barack obama", "albert einstein", "shakespeare"]


# (intent, slot) or slot -> values from the state. Closed domains only.
def _state_values(state: dict, intent: str, slot: str) -> Optional[list[str]]:
    w = state["world"]
    table: dict[tuple[str, str] | str, Callable[[], list[str]]] = {
        ("weather_query", "place_name"): lambda: list(w["weather"]),
        ("datetime_query", "place_name"): lambda: [p for p in w["timezones"] if p in w["weather"]],
        ("datetime_convert", "place_name"): lambda: [p for p in w["timezones"] if p in w["weather"] and p != state["clock"]["place"]],
        ("qa_factoid", "place_name"): lambda: [k for k in w["facts"] if k not in _facts_people(state)],
        ("qa_factoid", "person"): lambda: _facts_people(state),
        ("recommendation_events", "place_name"): lambda: sorted({e["place"] for e in w["events"]}),
        ("recommendation_locations", "place_name"): lambda: sorted({x["place"] for x in w["locations"]}),
        ("transport_query", "place_name"): lambda: sorted({d for t in w["transport"].values() for d in t}),
        ("transport_ticket", "place_name"): lambda: sorted({d for t in w["transport"].values() for d in t}),
        ("transport_taxi", "place_name"): lambda: ["the airport", "the station", "the city centre", "the hospital",
                                                    "the office", "the museum", "the hotel", "the stadium"],
        ("transport_traffic", "place_name"): lambda: list(w["traffic"]),
        ("cooking_recipe", "food_type"): lambda: list(w["recipes"]),
        ("takeaway_order", "food_type"): lambda: sorted({m["food"] for m in w["menus"].values()}),
        ("takeaway_query", "food_type"): lambda: sorted({m["food"] for m in w["menus"].values()}),
        ("qa_stock", "business_name"): lambda: list(w["stocks"]),
        ("takeaway_query", "business_name"): lambda: list(w["menus"]),
        ("takeaway_order", "business_name"): lambda: list(w["menus"]),
        ("social_query", "person"): lambda: sorted({p["person"] for p in state["social"]["feed"]}),
        "house_place": lambda: list(state["devices"]["lights"]),
        "device_type": lambda: [p for p in state["devices"]["plugs"] if p != "plug"],  # not the generic one
        "color_type": lambda: ["red", "orange", "yellow", "green", "blue", "purple", "pink", "cyan", "warm white"],
        "person": lambda: list(state["contacts"]),
        "relation": lambda: [c["relation"] for c in state["contacts"].values() if c["relation"]],
        "event_name": lambda: [e["event"] for e in state["calendar"]],
        "list_name": lambda: list(state["lists"]),
        "definition_word": lambda: list(w["definitions"]),
        "currency_name": lambda: [c for c in w["currencies"] if c != "dollar"],
        "artist_name": lambda: sorted({s["artist"] for s in w["songs"]}),
        "song_name": lambda: [s["title"] for s in w["songs"]],
        "music_genre": lambda: sorted({s["genre"] for s in w["songs"]}),
        "radio_name": lambda: list(w["radio"]),
        "podcast_name": lambda: list(w["podcasts"]),
        "audiobook_name": lambda: [b["title"] for b in w["audiobooks"]],
        "game_name": lambda: list(w["games"]),
        "news_topic": lambda: list(w["news"]),
        "media_type": lambda: ["facebook", "twitter", "instagram", "linkedin"],
        "business_type": lambda: sorted({x["type"] for x in w["locations"]}),
        "movie_type": lambda: sorted({m["genre"] for m in w["movies"]}),
        "transport_type": lambda: ["train", "bus", "plane"],
        "place_name": lambda: list(w["weather"]),
    }
    fn = table.get((intent, slot)) or table.get(slot)
    return fn() if fn else None


def slot_value(rng: random.Random, state: dict, intent: str, slot: str, split: str) -> str:
    """A value of ``slot`` for ``intent`` that the environment can act on."""
    if slot == "time":
        return time_value(rng, split)
    if slot == "date":
        return date_value(rng, split)
    if slot == "expression":
        hi = 20 if split == "train" else 60
        a, b = rng.randint(2, hi), rng.randint(2, 12)
        return f"{number_to_words(a)} {rng.choice(['plus', 'minus', 'times'])} {number_to_words(b)}"
    if slot == "email_address":
        return f"{rng.choice(['me', 'hello', 'info', 'home'])} at {open_value(rng, 'email_domain', split)}"
    if slot == "phone_number":
        return " ".join(number_to_words(rng.randint(0, 9)) for _ in range(7))
    if intent == "lists_createoradd" and slot == "list_name" and rng.random() < 0.4:
        return open_value(rng, "new_list_name", split)
    if intent == "email_addcontact" and slot == "person":
        return open_value(rng, "person", split)
    if intent == "calendar_set" and slot == "event_name":
        return open_value(rng, "event_name", split)
    if slot in ("item", "message", "coffee_type", "weather_descriptor", "player_setting", "change_amount"):
        return open_value(rng, slot, split)
    values = _state_values(state, intent, slot)
    if not values:
        raise ValueError(f"no values for slot {slot!r} of intent {intent} (add them to {PHRASING_DIR / 'values.yaml'})")
    return pick_value(rng, values, split)


# ---------------------------------------------------------------------------------------------
# States: the items a query or remove request names are added to the initial state, so the
# test split can name held-out events, contacts, lists and alarms.
def augment_state(rng: random.Random, state: dict, intent: str, split: str) -> bool:
    """Add an item the request can name; True when the state changed."""
    today = dt.date.fromisoformat(state["clock"]["now"][:10])
    if intent in ("calendar_query", "calendar_remove"):
        name = open_value(rng, "event_name", split)
        if any(e["event"] == name for e in state["calendar"]):
            return False
        day = today + dt.timedelta(days=rng.randint(0, 6))
        state["calendar"].append({"event": name, "date": day.isoformat(),
                                  "time": f"{rng.randint(8, 19):02d}:{rng.choice(TRAIN_MINUTES):02d}",
                                  "person": "", "place": ""})
        state["calendar"].sort(key=lambda e: (e["date"], e["time"], e["event"]))
        return True
    if intent in ("alarm_query", "alarm_remove"):
        day = today + dt.timedelta(days=rng.randint(1, 3))
        t = parse_time(time_value(rng, split))
        entry = {"time": f"{t // 60:02d}:{t % 60:02d}", "date": day.isoformat(), "label": "", "repeat": ""}
        if any(a["time"] == entry["time"] for a in state["alarms"]):
            return False
        state["alarms"].append(entry)
        state["alarms"].sort(key=lambda a: (a["date"], a["time"]))
        return True
    if intent in ("email_querycontact",) and rng.random() < 0.5:
        name = open_value(rng, "person", split)
        if name in state["contacts"]:
            return False
        state["contacts"][name] = {"email": f"{name} at {open_value(rng, 'email_domain', split)}",
                                   "phone": " ".join(number_to_words(rng.randint(0, 9)) for _ in range(7)),
                                   "relation": ""}
        return True
    if intent in ("lists_query", "lists_remove") and rng.random() < 0.5:
        name = open_value(rng, "new_list_name", split)
        if name in state["lists"]:
            return False
        state["lists"][name] = [open_value(rng, "item", split) for _ in range(2)]
        return True
    return False


def names_in_state(state: dict, intent: str, slot: str, added_before: dict) -> Optional[list[str]]:
    """For a request about an item just added to the state: that item's name."""
    if intent in ("calendar_query", "calendar_remove") and slot == "event_name":
        return [e["event"] for e in state["calendar"] if e["event"] not in {x["event"] for x in added_before["calendar"]}]
    if intent == "alarm_remove" and slot == "time":
        return [format_time(from_hhmm(a["time"])) for a in state["alarms"]
                if a not in added_before["alarms"]]
    if intent == "email_querycontact" and slot == "person":
        return [n for n in state["contacts"] if n not in added_before["contacts"]]
    if intent in ("lists_query", "lists_remove") and slot == "list_name":
        return [n for n in state["lists"] if n not in added_before["lists"]]
    return None


# ---------------------------------------------------------------------------------------------
# Requests.
@dataclass
class Request:
    """One filled template: its words, intent and slots (in order of appearance)."""

    text: str
    intent: str
    slots: list[tuple[str, str]]
    template: str

    @property
    def call(self) -> Call:
        return intent_to_call(self.intent, self.slots)


def fill(template: str, values: dict[str, str]) -> str:
    return " ".join(PLACEHOLDER.sub(lambda m: values[m.group(1)], template).split())


def _joint_values(rng: random.Random, state: dict, intent: str, slots: set[str], split: str) -> dict[str, str]:
    """Values of slots that must fit together (a destination the transport mode serves, a
    person who posted on that service)."""
    w = state["world"]
    if intent in ("transport_query", "transport_ticket") and {"transport_type", "place_name"} <= slots:
        mode = pick_value(rng, list(w["transport"]), split)
        return {"transport_type": mode, "place_name": pick_value(rng, list(w["transport"][mode]), split)}
    if intent in ("takeaway_order", "takeaway_query") and {"food_type", "business_name"} & slots:
        names = [n for n, m in w["menus"].items() if intent == "takeaway_query" or (m["open"] and m["delivery"])]
        name = pick_value(rng, names, split)
        return {"business_name": name, "food_type": w["menus"][name]["food"]}
    if intent == "social_query" and {"person", "media_type"} <= slots:
        person = pick_value(rng, [p["person"] for p in state["social"]["feed"]], split)
        post = rng.choice([p for p in state["social"]["feed"] if p["person"] == person])
        return {"person": person, "media_type": post["service"]}
    return {}


def make_request(rng: random.Random, state: dict, intent: str, template: str, split: str,
                 fixed: Optional[dict[str, str]] = None, casual: Optional[Casual] = None) -> Request:
    """Fill ``template`` of ``intent`` with values (``fixed`` first), said casually when ``casual``
    says so (the slots keep the template's order)."""
    said = casual.apply(rng, template) if casual else template
    wanted = set(PLACEHOLDER.findall(template))
    values = {k: v for k, v in _joint_values(rng, state, intent, wanted, split).items() if k in wanted}
    for slot in PLACEHOLDER.findall(template):
        if slot in values:
            continue
        if fixed and slot in fixed:
            values[slot] = fixed[slot]
        else:
            values[slot] = slot_value(rng, state, intent, slot, split)
    order = sorted(values, key=lambda s: template.index("{" + s + "}"))
    return Request(fill(said, values), intent, [(s, values[s]) for s in order], template)


def wrap(rng: random.Random, text: str, ph: Phrasings) -> str:
    """Add a wake word, an opener and a closer (each with its file's probability)."""
    parts = []
    if ph.wake_words and rng.random() < ph.wake_rate:
        parts.append(rng.choice(ph.wake_words) + ",")
    if ph.openers and rng.random() < ph.opener_rate:
        parts.append(rng.choice(ph.openers))
    parts.append(text)
    if ph.closers and rng.random() < ph.closer_rate:
        parts[-1] += ","
        parts.append(rng.choice(ph.closers))
    return " ".join(parts)
