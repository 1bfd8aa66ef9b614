"""SLURP's label set and the invertible mapping between intents with slots and tool calls.

Every intent (``scenario_action``) is served by exactly one tool, sometimes with a fixed
argument (``iot_hue_lightoff`` -> ``lights action=off``); a slot ``(type, value)`` becomes the
argument ``type=value``. A second slot of the same type becomes ``type_2`` (``place_name_2``),
a third ``type_3``. So ``call_to_intent(intent_to_call(i, s))`` gives back ``i`` and ``s`` (as a
multiset: arguments are unordered), and every valid call names exactly one intent.
"""
from __future__ import annotations

import re

from speechlm.agent.calls import RESERVED, Call, normalize_words
from speechlm.agent.tools import TOOLS

SCENARIOS = (
    "alarm", "audio", "calendar", "cooking", "datetime", "email", "general", "iot", "lists", "music",
    "news", "play", "qa", "recommendation", "social", "takeaway", "transport", "weather",
)

INTENTS = (
    "alarm_set", "alarm_query", "alarm_remove",
    "audio_volume_up", "audio_volume_down", "audio_volume_mute", "audio_volume_other",
    "calendar_set", "calendar_query", "calendar_remove",
    "cooking_recipe",
    "datetime_query", "datetime_convert",
    "email_query", "email_sendemail", "email_querycontact", "email_addcontact",
    "general_quirky", "general_joke", "general_greet",
    "iot_hue_lightoff", "iot_hue_lighton", "iot_hue_lightchange", "iot_hue_lightup", "iot_hue_lightdim",
    "iot_coffee", "iot_cleaning", "iot_wemo_on", "iot_wemo_off",
    "lists_query", "lists_remove", "lists_createoradd",
    "music_likeness", "music_dislikeness", "music_query", "music_settings",
    "news_query",
    "play_music", "play_radio", "play_podcasts", "play_audiobook", "play_game",
    "qa_factoid", "qa_definition", "qa_currency", "qa_stock", "qa_maths",
    "recommendation_events", "recommendation_locations", "recommendation_movies",
    "social_post", "social_query",
    "takeaway_query", "takeaway_order",
    "transport_query", "transport_ticket", "transport_taxi", "transport_traffic",
    "weather_query",
)

_REPEAT_RE = re.compile(r"^(.*)_([2-9])$")


def scenario_of(intent: str) -> str:
    """``iot_hue_lightoff`` -> ``iot``."""
    return intent.split("_", 1)[0]


def intent_table() -> dict[str, tuple[str, dict[str, str]]]:
    """intent -> (tool name, fixed args), read from the tools' registrations."""
    table: dict[str, tuple[str, dict[str, str]]] = {}
    for name in TOOLS.names():
        for intent, fixed in TOOLS.get(name).intents.items():
            if intent in table:
                raise ValueError(f"intent {intent} is served by two tools: {table[intent][0]} and {name}")
            table[intent] = (name, dict(fixed))
    return table


def tool_for(intent: str) -> tuple[str, dict[str, str]]:
    """The tool and fixed arguments of ``intent``; KeyError naming the valid intents otherwise."""
    table = intent_table()
    if intent not in table:
        from speechlm.registry import suggest

        raise KeyError(f"unknown intent {intent!r}{suggest(intent, table)}; see speechlm.agent.intents.INTENTS")
    return table[intent]


def intent_to_call(intent: str, slots: list[tuple[str, str]] | list[list[str]]) -> Call:
    """The call for ``intent`` with its ``(slot type, value)`` pairs (values lower-cased).

    The call is not validated against the tool's schema here (the environment does that), so
    a SLURP row with a slot type its tool does not take still maps to a call (which then fails
    with ``unknown argument``)."""
    name, fixed = tool_for(intent)
    args = dict(fixed)
    for slot_type, value in slots:
        if slot_type in fixed or _REPEAT_RE.match(slot_type):
            raise ValueError(f"intent {intent}: slot type {slot_type!r} clashes with an argument name of {name}")
        key, n = slot_type, 1
        while key in args:
            n += 1
            key = f"{slot_type}_{n}"
        args[key] = normalize_words("".join(" " if c in RESERVED else c for c in value))
    return Call(name, args)


def call_to_intent(call: Call) -> tuple[str, list[tuple[str, str]]]:
    """The intent and ``(slot type, value)`` pairs of a call; ValueError when the call names no intent."""
    matches = [(intent, fixed) for intent, (tool, fixed) in intent_table().items()
               if tool == call.name and all(call.args.get(k) == v for k, v in fixed.items())]
    if not matches:
        raise ValueError(f"call {call.name} with {call.args} matches no intent")
    # the most specific fixed-args match wins (a family tool has one match per value anyway)
    intent, fixed = max(matches, key=lambda m: len(m[1]))
    slots = []
    for key in sorted(call.args):
        if key in fixed:
            continue
        m = _REPEAT_RE.match(key)
        slots.append((m.group(1) if m else key, call.args[key]))
    return intent, slots


def entities(call: Call) -> list[dict[str, str]]:
    """SLURP's prediction form of a call's slots: ``[{"type": ..., "filler": ...}]``."""
    return [{"type": t, "filler": v} for t, v in call_to_intent(call)[1]]
