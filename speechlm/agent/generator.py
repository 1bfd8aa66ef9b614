"""The voice-agent episode generator: requests from phrasing templates and slot values, with the
expected calls, final state and answer facts computed by running the calls on the environment.

Phrasings live in ``phrasings/train.yaml`` (author A: full, polite sentences) and
``phrasings/test.yaml`` (author B, written independently: short, elliptic, chatty, fillers), pooled
with a quarter of each list held out for the test split, or one author per split
(:func:`~speechlm.agent.requests.split_phrasings`); slot values of open domains in
``phrasings/values.yaml`` (with held-out test values); values of closed domains come from the
environment state and are split by a stable hash.

Episode kinds (``generate_episodes(n, split, seed, mix=...)``):

- ``atomic``: one request, one call, an answer that restates the tool's result;
- ``compositional``: two or three requests joined by a connector (concatenation), or a request
  whose second call needs the first's result (context transition: "when is my dentist
  appointment, and set an alarm an hour before it");
- ``recovery``: the first call fails and the agent recovers: a missing argument -> it asks back
  and the user answers in a second turn; a value the tool does not know -> it corrects the
  call (the error lists the valid values); an offline device or a missing item -> it tells the user.

Each episode's ``meta["reference"]`` is its reference dialogue (user, assistant and tool turns
in the text formats of :mod:`speechlm.agent.calls`), from which
:mod:`speechlm.agent.datadir` builds one training utterance per assistant step.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional


from speechlm.agent.calls import Call, format_result, format_turn, normalize_words
from speechlm.agent.env import Environment, default_state
from speechlm.agent.episodes import Episode
from speechlm.agent.intents import INTENTS, intent_to_call
from speechlm.agent.requests import (DEFAULT_MIX, HELDOUT_RATE, HELDOUT_VAR, PLACEHOLDER, SPLITS, TRANSITIONS, Phrasings,
                                     augment_state, fill, load_phrasings, make_request, names_in_state, open_value,
                                     pick_value, slot_value, split_phrasings, time_value, wrap)
from speechlm.agent.spoken import format_time, from_hhmm
from speechlm.agent.tools import ToolError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Running calls and the reference dialogue.
STATE_KEYS_SKIPPED = ("world",)  # read-only tables: never compared, never stored in expected_state


def expected_state_of(state: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in state.items() if k not in STATE_KEYS_SKIPPED}))


def reference_answer(results: list[dict]) -> str:
    """The answer the agent should give after its calls: the tools' result texts, joined.

    Deterministic from the results, so a model that reads them can say it; the answer facts
    of query results are these texts."""
    texts = [normalize_words(r.get("text", "done")) for r in results]
    return " and ".join(t for t in texts if t) or "done"


def error_answer(err: ToolError) -> str:
    return "sorry, " + normalize_words(str(err))


ASK = {"time": "what time should it be", "date": "which day do you mean", "color_type": "which colour would you like",
       "device_type": "which device do you mean", "event_name": "what is the event called",
       "person": "who do you mean", "email_address": "what is the email address", "house_place": "which room",
       "list_name": "which list do you mean", "food_type": "which dish do you mean",
       "message": "what should the post say", "radio_name": "which station would you like",
       "place_name": "where to", "expression": "what should i work out", "business_name": "which restaurant",
       "audiobook_name": "which book would you like", "definition_word": "which word",
       "currency_name": "which currency", "phone_number": "what is the phone number"}


def ask_back(arg: str) -> str:
    return ASK.get(arg, f"which {arg.replace('_', ' ')} do you mean")


def is_query(before: dict, after: dict) -> bool:
    """Whether a call left the (non-world) state as it was."""
    return expected_state_of(before) == expected_state_of(after)


_PUNCT = re.compile(r"[,.;:!?\"]")


def transcript_form(text: str) -> str:
    """``hey computer, lights off.`` -> ``hey computer lights off`` (apostrophes stay)."""
    return " ".join(_PUNCT.sub(" ", text).split())


class Dialogue:
    """A reference dialogue under construction, run on an environment as it is built."""

    def __init__(self, state: dict) -> None:
        self.env = Environment(state)
        self.turns: list[dict] = []
        self.results: list[dict] = []
        self.facts: list[str] = []
        self.calls: list[dict] = []
        self.spoken: list[str] = []

    def user(self, text: str) -> None:
        """A user turn: its words without punctuation (what a transcript holds, as in SLURP);
        the punctuated form, which gives the synthesizers their pauses, is kept in ``spoken``."""
        self.spoken.append(text)
        self.turns.append({"role": "user", "text": transcript_form(text)})

    def call(self, call: Call, expect_error: bool = False, allow_error: bool = False) -> Optional[dict]:
        """Run ``call``; record it; return the result (None after a ToolError, which raises
        unless the error is expected or allowed)."""
        before = expected_state_of(self.env.state)
        self.turns.append({"role": "assistant", "text": format_turn("call", call)})
        try:
            result = self.env.execute(call)
        except ToolError as e:
            self.turns.append({"role": "tool", "text": format_result(e)})
            if not (expect_error or allow_error):
                raise
            self.error = e
            return None
        if expect_error:
            raise ValueError(f"call {call} was expected to fail")
        self.turns.append({"role": "tool", "text": format_result(result)})
        self.results.append(result)
        self.calls.append(call.to_dict())
        if is_query(before, self.env.state):
            self.facts.append(normalize_words(result.get("text", "")))
        return result

    def say(self, text: str) -> None:
        self.turns.append({"role": "assistant", "text": format_turn("answer", text)})


def reference_dialogue(episode: Episode) -> list[dict]:
    """A reference dialogue for an episode made elsewhere (e.g. imported from SLURP): its
    expected calls run in order on its initial state, then the answer (or, when a call fails,
    the error told to the user). Only single-user-turn episodes."""
    if len(episode.turns) != 1:
        raise ValueError(f"episode {episode.id}: a reference dialogue can only be made for one user turn; "
                         f"give meta.reference for multi-turn episodes")
    d = Dialogue(episode.initial_state if episode.initial_state is not None else fresh_state())
    d.user(episode.turns[0]["text"])
    for c in episode.expected_calls:
        if d.call(Call.from_dict(c), allow_error=True) is None:
            d.say(error_answer(d.error))
            return d.turns
    d.say(reference_answer(d.results))
    return d.turns


# ---------------------------------------------------------------------------------------------
# Episode makers. Each returns (turns of the user, dialogue, intent, slots, meta) or raises
# ToolError / ValueError when the sampled values do not fit (the caller draws again).
@dataclass
class Made:
    user_turns: list[str]
    dialogue: Dialogue
    initial_state: Optional[dict]
    intent: str
    slots: list[tuple[str, str]]
    kind: str
    meta: dict


@lru_cache(maxsize=1)
def _default_json() -> str:
    return json.dumps(default_state())


def fresh_state() -> dict:
    """A new copy of the home environment's default state (decoded from a cached JSON text:
    several times faster than building or deep-copying it)."""
    return json.loads(_default_json())


def _changed(state: dict) -> Optional[dict]:
    """``state`` when it differs from the default state (stored in the episode), else None."""
    return None if json.dumps(state) == _default_json() else state


def _initial(rng: random.Random, intent: str, split: str) -> tuple[dict, bool]:
    state = fresh_state()
    changed = augment_state(rng, state, intent, split)
    return state, changed


def make_atomic(rng: random.Random, ph: Phrasings, split: str, intent: Optional[str] = None,
                template: Optional[str] = None) -> Made:
    intent = intent or rng.choice(INTENTS)
    state, changed = _initial(rng, intent, split)
    start = json.loads(json.dumps(state)) if changed else None
    template = template or rng.choice(ph.intents[intent])
    fixed = {}
    if changed:
        for slot in PLACEHOLDER.findall(template):
            names = names_in_state(state, intent, slot, fresh_state())
            if names:
                fixed[slot] = rng.choice(names)
    req = make_request(rng, state, intent, template, split, fixed, casual=ph.casual)
    d = Dialogue(state)
    d.user(wrap(rng, req.text, ph))
    d.call(req.call)
    d.say(reference_answer(d.results))
    return Made([d.turns[0]["text"]], d, start, intent, req.slots, "atomic",
                {"template": template})


COMPOSABLE = [i for i in INTENTS if not i.startswith("general_") and i not in ("music_query",)]


def make_concatenation(rng: random.Random, ph: Phrasings, split: str) -> Made:
    k = 2 if rng.random() < 0.75 else 3
    intents: list[str] = []
    while len(intents) < k:
        i = rng.choice(COMPOSABLE)
        if all(i.split("_")[0] != j.split("_")[0] for j in intents):  # different scenarios
            intents.append(i)
    state = fresh_state()
    reqs = [make_request(rng, state, i, rng.choice(ph.intents[i]), split, casual=ph.casual) for i in intents]
    text = reqs[0].text
    for r in reqs[1:]:
        text += f" {rng.choice(ph.connectors)} {r.text}"
    d = Dialogue(state)
    d.user(wrap(rng, text, ph))
    for r in reqs:
        d.call(r.call)
    d.say(reference_answer(d.results))
    return Made([d.turns[0]["text"]], d, None, intents[0], reqs[0].slots, "compositional",
                {"composition": "concatenation", "intents": intents, "templates": [r.template for r in reqs]})


def make_transition(rng: random.Random, ph: Phrasings, split: str) -> Made:
    """The second call needs the first call's result."""
    choices = [t for t in TRANSITIONS if ph.transitions.get(t)]
    if not choices:
        raise ValueError(f"{ph.path}: no transitions")
    kind = rng.choice(choices)
    template = rng.choice(ph.transitions[kind])
    state = fresh_state()
    if kind == "calendar_alarm":
        augment_state(rng, state, "calendar_query", split)
        name = pick_value(rng, [e["event"] for e in state["calendar"]], split)
        event = next(e for e in state["calendar"] if e["event"] == name)
        if not event["time"] or from_hhmm(event["time"]) < 9 * 60:
            raise ValueError("event too early for an alarm before it")
        offset = open_value(rng, "offset", split)
        text = fill(template, {"event_name": event["event"], "offset": offset})
        d = Dialogue(state)
        d.user(wrap(rng, text, ph))
        first = Call("calendar", {"action": "query", "event_name": event["event"]})
        res = d.call(first)
        if len(res["events"]) != 1:
            raise ValueError("ambiguous event")
        ev = res["events"][0]
        from speechlm.agent.tools.common import say_date

        # the time as the request and the calendar say it; the alarm tool works it out
        alarm_time = f"{offset} before {format_time(from_hhmm(ev['time']))}"
        d.call(Call("alarm", {"action": "set", "time": alarm_time, "date": say_date(state, ev["date"])}))
        intent, slots = "calendar_query", [("event_name", event["event"])]
        meta = {"composition": "transition", "transition": kind, "intents": ["calendar_query", "alarm_set"]}
    elif kind == "alarm_remove_first":
        state["alarms"] = []  # two fresh alarms, so the first one is not always the default one
        while len(state["alarms"]) < 2:
            augment_state(rng, state, "alarm_query", split)
        d = Dialogue(state)
        d.user(wrap(rng, fill(template, {}), ph))
        res = d.call(Call("alarm", {"action": "query"}))
        first = res["alarms"][0]
        from speechlm.agent.tools.common import say_date

        d.call(Call("alarm", {"action": "remove", "time": format_time(from_hhmm(first["time"])),
                              "date": say_date(state, first["date"])}))
        intent, slots = "alarm_query", []
        meta = {"composition": "transition", "transition": kind, "intents": ["alarm_query", "alarm_remove"]}
    else:  # transport_calendar
        mode = pick_value(rng, list(state["world"]["transport"]), split)
        dest = pick_value(rng, list(state["world"]["transport"][mode]), split)
        text = fill(template, {"transport_type": mode, "place_name": dest})
        d = Dialogue(state)
        d.user(wrap(rng, text, ph))
        res = d.call(Call("transport", {"action": "query", "transport_type": mode, "place_name": dest}))
        d.call(Call("calendar", {"action": "set", "event_name": f"{mode} to {dest}", "date": "today",
                                 "time": format_time(res["depart"])}))
        intent, slots = "transport_query", [("transport_type", mode), ("place_name", dest)]
        meta = {"composition": "transition", "transition": kind, "intents": ["transport_query", "calendar_set"]}
    d.say(reference_answer(d.results))
    return Made([d.turns[0]["text"]], d, _changed(state), intent, slots, "compositional", {**meta, "template": template})


def make_ask_back(rng: random.Random, ph: Phrasings, split: str) -> Made:
    """A request without a required argument -> error -> the agent asks -> the user answers."""
    intent = rng.choice(sorted(ph.underspecified))
    template = rng.choice(ph.underspecified[intent])
    state = fresh_state()
    req = make_request(rng, state, intent, template, split, casual=ph.casual)
    d = Dialogue(state)
    d.user(wrap(rng, req.text, ph))
    d.call(req.call, expect_error=True)
    err = d.error
    if err.kind != "missing" or not err.arg:
        raise ValueError(f"{ph.path}: underspecified {intent}: {template!r} fails with {err.kind}: {err}")
    value = slot_value(rng, state, intent, err.arg, split)
    d.say(ask_back(err.arg))
    d.user(fill(rng.choice(ph.answers), {"value": value}))
    slots = req.slots + [(err.arg, value)]
    d.call(intent_to_call(intent, slots))
    d.say(reference_answer(d.results))
    return Made([d.turns[0]["text"], d.turns[4]["text"]], d, None, intent, slots, "recovery",
                {"recovery": "ask_back", "template": template, "missing": err.arg})


def make_correction(rng: random.Random, ph: Phrasings, split: str) -> Made:
    """A value the tool does not know (a synonym) -> error listing the valid ones -> corrected call."""
    slot = rng.choice(sorted(ph.corrections))
    said, meant = rng.choice(sorted(ph.corrections[slot].items()))
    intents = [i for i in INTENTS if any("{" + slot + "}" in t for t in ph.intents[i])]
    intent = rng.choice(intents)
    template = rng.choice([t for t in ph.intents[intent] if "{" + slot + "}" in t])
    state = fresh_state()
    req = make_request(rng, state, intent, template, split, {slot: said}, casual=ph.casual)
    d = Dialogue(state)
    d.user(wrap(rng, req.text, ph))
    d.call(req.call, expect_error=True)
    if d.error.arg != slot:
        raise ValueError(f"correction {said} -> {meant}: the error is about {d.error.arg}")
    slots = [(s, meant if s == slot else v) for s, v in req.slots]
    d.call(intent_to_call(intent, slots))
    d.say(reference_answer(d.results))
    return Made([d.turns[0]["text"]], d, None, intent, slots, "recovery",
                {"recovery": "correction", "template": template, "said": said, "meant": meant})


def make_inform(rng: random.Random, ph: Phrasings, split: str) -> Made:
    """An offline device or a missing item -> the agent tells the user (state unchanged)."""
    state = fresh_state()
    choice = rng.choice(["light", "plug", "coffee", "vacuum", "alarm"])
    if choice == "light":
        intent = rng.choice(["iot_hue_lighton", "iot_hue_lightoff", "iot_hue_lightup", "iot_hue_lightdim"])
        room = pick_value(rng, list(state["devices"]["lights"]), split)
        state["devices"]["lights"][room]["online"] = False
        fixed = {"house_place": room}
    elif choice == "plug":
        intent = rng.choice(["iot_wemo_on", "iot_wemo_off"])
        dev = pick_value(rng, list(state["devices"]["plugs"]), split)
        state["devices"]["plugs"][dev]["online"] = False
        fixed = {"device_type": dev}
    elif choice in ("coffee", "vacuum"):
        intent = "iot_coffee" if choice == "coffee" else "iot_cleaning"
        state["devices"]["coffee_machine" if choice == "coffee" else "vacuum"]["online"] = False
        fixed = {}
    else:
        intent = "alarm_remove"
        fixed = {"time": time_value(rng, split)}
        if any(format_time(from_hhmm(a["time"])) == fixed["time"] for a in state["alarms"]):
            raise ValueError("the alarm exists")
    templates = [t for t in ph.intents[intent] if all("{" + s + "}" in t for s in fixed)]
    template = rng.choice(templates)
    start = _changed(json.loads(json.dumps(state)))
    req = make_request(rng, state, intent, template, split, fixed, casual=ph.casual)
    d = Dialogue(state)
    d.user(wrap(rng, req.text, ph))
    d.call(req.call, expect_error=True)
    d.say(error_answer(d.error))
    d.calls.append(req.call.to_dict())
    d.facts.append(normalize_words(str(d.error)))
    return Made([d.turns[0]["text"]], d, start, intent, req.slots,
                "recovery", {"recovery": "inform", "error": d.error.kind, "template": template})


def template_yield(split: str, tries: int = 8, seed: int = 0,
                   phrasings: Optional[str] = None) -> dict[tuple[str, str], int]:
    """``(intent, template) -> episodes made in `tries` draws`` for every atomic template of
    ``split`` (or of the file ``phrasings``, with ``split``'s values): a template that never makes
    an episode asks for a value its tool cannot act on."""
    ph = load_phrasings(phrasings or split)
    rng = random.Random(seed)
    out = {}
    for intent, templates in ph.intents.items():
        for t in templates:
            ok = 0
            for _ in range(tries):
                try:
                    make_atomic(rng, ph, split, intent, t)
                    ok += 1
                except (ToolError, ValueError):
                    pass
            out[(intent, t)] = ok
    return out


def _make(rng: random.Random, kind: str, ph: Phrasings, split: str, intent: Optional[str] = None) -> Made:
    if kind == "atomic":
        return make_atomic(rng, ph, split, intent)
    if kind == "compositional":
        return make_transition(rng, ph, split) if rng.random() < 0.4 else make_concatenation(rng, ph, split)
    r = rng.random()
    if r < 0.45 and ph.underspecified:
        return make_ask_back(rng, ph, split)
    if r < 0.7 and ph.corrections:
        return make_correction(rng, ph, split)
    return make_inform(rng, ph, split)


def generate_episodes(n: int, split: str = "train", seed: int = 0, mix: Optional[dict[str, float]] = None,
                      phrasings: Optional[str] = None, id_prefix: Optional[str] = None,
                      max_tries: int = 50, heldout_rate: float = HELDOUT_RATE,
                      held_out: str = "templates") -> list[Episode]:
    """``n`` episodes of ``split`` (``train`` or ``test``: its phrasings and held-out values),
    deterministic under ``seed``. ``held_out``: how the test phrasings differ from training's
    (:func:`~speechlm.agent.requests.split_phrasings`); ``phrasings``, a YAML path, replaces them.
    ``mix`` gives the share of each kind (default :data:`DEFAULT_MIX`); atomic episodes cycle
    through the 59 intents so that each is covered.
    ``heldout_rate``: the share of the test split's slot values drawn from the held-out values."""
    if not 0 <= heldout_rate <= 1:
        raise ValueError(f"heldout_rate must be in [0, 1], got {heldout_rate}")
    token = HELDOUT_VAR.set(heldout_rate)
    try:
        return _generate(n, split, seed, mix, phrasings, id_prefix, max_tries, held_out)
    finally:
        HELDOUT_VAR.reset(token)


def _generate(n: int, split: str, seed: int, mix: Optional[dict[str, float]], phrasings: Optional[str],
              id_prefix: Optional[str], max_tries: int, held_out: str) -> list[Episode]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    bad = sorted(set(mix) - set(DEFAULT_MIX))
    if bad or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix: shares of {', '.join(DEFAULT_MIX)} (non-negative, not all zero), got {mix}")
    ph = load_phrasings(phrasings) if phrasings else split_phrasings(split, held_out)
    rng = random.Random(f"{seed}-{split}")
    total = sum(mix.values())
    counts = {k: int(round(n * v / total)) for k, v in mix.items()}
    while sum(counts.values()) != n:  # rounding: adjust the largest share
        big = max(counts, key=lambda k: (mix[k], k))
        counts[big] += 1 if sum(counts.values()) < n else -1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    intent_cycle = list(INTENTS)
    rng.shuffle(intent_cycle)
    prefix = id_prefix or split
    episodes: list[Episode] = []
    failures: dict[str, int] = {}
    seen_text: set[tuple] = set()
    n_atomic = 0
    for i, kind in enumerate(kinds):
        intent = None
        if kind == "atomic":
            intent = intent_cycle[n_atomic % len(intent_cycle)]
            n_atomic += 1
        for attempt in range(max_tries):
            try:
                made = _make(rng, kind, ph, split, intent)
            except (ToolError, ValueError, KeyError, IndexError) as e:
                key = f"{kind}: {type(e).__name__}: {str(e)[:80]}"
                failures[key] = failures.get(key, 0) + 1
                continue
            key = tuple(made.user_turns)
            if key in seen_text and attempt < max_tries // 2:
                continue  # prefer distinct requests
            seen_text.add(key)
            break
        else:
            raise RuntimeError(f"could not make a {kind} episode in {max_tries} tries; last problems: "
                               + "; ".join(list(failures)[-3:]))
        d = made.dialogue
        episodes.append(Episode(
            id=f"{prefix}-{i:06d}", turns=[{"text": t, "audio": None} for t in made.user_turns],
            initial_state=made.initial_state, expected_calls=list(d.calls),
            expected_state=expected_state_of(d.env.state), answer_facts=list(dict.fromkeys(f for f in d.facts if f)),
            intent=made.intent, slots=[list(s) for s in made.slots], kind=made.kind, split=split,
            meta={**made.meta, "seed": seed, "reference": d.turns,
                  **({"spoken": d.spoken} if d.spoken != made.user_turns else {})}))
    if failures:
        log.debug("draws that did not fit (drawn again): %s", failures)
    log.info("generated %d %s episodes: %s", len(episodes), split,
             ", ".join(f"{k} {sum(e.kind == k for e in episodes)}" for k in DEFAULT_MIX))
    return episodes
