"""Time tools: alarms, the calendar and the clock (SLURP scenarios alarm, calendar, datetime)."""
from __future__ import annotations

import datetime as dt

from speechlm.agent.spoken import MONTHS, format_time, hhmm, number_to_words, ordinal_words
from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import (count_words, get_date, get_time, listing, match, need, now, say_date,
                                         say_time, today)

WHEN = ("date", "time", "timeofday")


def _default_day(state: dict, minutes: int) -> dt.date:
    """An alarm without a date rings at the next occurrence of its time."""
    t = now(state)
    return t.date() if minutes > t.hour * 60 + t.minute else t.date() + dt.timedelta(days=1)


@register_tool(
    "alarm", "set, list or remove alarms",
    {"action": {"enum": ["set", "query", "remove"]}, **slots(*WHEN, "alarm_type", "event_name", "general_frequency", "person", "relation")},
    required=["action"],
    intents={"alarm_set": {"action": "set"}, "alarm_query": {"action": "query"}, "alarm_remove": {"action": "remove"}},
)
def alarm(state: dict, args: dict) -> dict:
    alarms = state["alarms"]
    action = args["action"]
    minutes = get_time(args, required=action == "set", tool="alarm set", state=state if action == "set" else None)
    day = get_date(state, args)
    if action == "set":
        day = day or _default_day(state, minutes)
        entry = {"time": hhmm(minutes), "date": day.isoformat(), "label": args.get("event_name", args.get("alarm_type", "")),
                 "repeat": args.get("general_frequency", "")}
        when = f"{format_time(minutes)} {say_date(state, entry['date'])}"
        if any(a["time"] == entry["time"] and a["date"] == entry["date"] for a in alarms):
            return {"text": f"an alarm is already set for {when}", "alarm": entry}
        alarms.append(entry)
        alarms.sort(key=lambda a: (a["date"], a["time"]))
        return {"text": f"alarm set for {when}", "alarm": entry}
    chosen = [a for a in alarms if (day is None or a["date"] == day.isoformat())
              and (minutes is None or a["time"] == hhmm(minutes))]
    said = [f"{say_time(a['time'])} {say_date(state, a['date'])}" for a in chosen]
    if action == "query":
        return {"text": f"you have {count_words(len(chosen), 'alarm')}" + (": " + listing(said, "") if said else ""),
                "alarms": chosen}
    if not chosen:
        what = " ".join(args[k] for k in WHEN if k in args)
        raise ToolError(f"no alarm {('for ' + what) if what else 'is set'}", "not_found", "time" if minutes is not None else "date")
    state["alarms"] = [a for a in alarms if a not in chosen]
    return {"text": f"removed {count_words(len(chosen), 'alarm')}: {listing(said, '')}", "removed": chosen}


@register_tool(
    "calendar", "add, look up or remove calendar events",
    {"action": {"enum": ["set", "query", "remove"]},
     **slots("event_name", *WHEN, "person", "relation", "place_name", "general_frequency", "meal_type",
             "business_name", "business_type", "list_name", "food_type")},
    required=["action"],
    intents={"calendar_set": {"action": "set"}, "calendar_query": {"action": "query"},
             "calendar_remove": {"action": "remove"}},
)
def calendar(state: dict, args: dict) -> dict:
    events = state["calendar"]
    action = args["action"]
    minutes = get_time(args, state=state if action == "set" else None)
    day = get_date(state, args)
    person = args.get("person", args.get("relation", ""))
    if action == "set":
        name = need(args, "event_name", "calendar", "set")
        entry = {"event": name, "date": (day or today(state)).isoformat(), "time": hhmm(minutes) if minutes is not None else "",
                 "person": person, "place": args.get("place_name", args.get("business_name", ""))}
        events.append(entry)
        events.sort(key=lambda e: (e["date"], e["time"], e["event"]))
        return {"text": f"added {_say_event(state, entry)}", "event": entry}
    chosen = [e for e in events
              if (day is None or e["date"] == day.isoformat()) and (minutes is None or e["time"] == hhmm(minutes))
              and (not person or e["person"] == person)
              and ("event_name" not in args or args["event_name"] in e["event"] or e["event"] in args["event_name"])]
    said = [_say_event(state, e) for e in chosen]
    if action == "query":
        when = f" {args['date']}" if "date" in args else ""
        return {"text": f"you have {count_words(len(chosen), 'event')}{when}" + (": " + listing(said, "") if said else ""),
                "events": chosen}
    if not chosen:
        what = " ".join(args[k] for k in ("event_name", *WHEN) if k in args)
        raise ToolError(f"no calendar event {what}".strip(), "not_found", "event_name" if "event_name" in args else "date")
    if not any(k in args for k in ("event_name", "date", "time", "person", "relation")):
        raise ToolError("missing argument event_name or date for calendar remove", "missing", "event_name")
    state["calendar"] = [e for e in events if e not in chosen]
    return {"text": f"removed {listing(said, '')}", "removed": chosen}


def _say_event(state: dict, e: dict) -> str:
    at = f" at {say_time(e['time'])}" if e["time"] else ""
    who = f" with {e['person']}" if e["person"] else ""
    return f"{e['event']}{who} {say_date(state, e['date'])}{at}"


def _zone(state: dict, name: str, arg: str) -> tuple[str, int]:
    zones = state["world"]["timezones"]
    key = match(name, zones, "place", arg)
    return key, zones[key]


@register_tool(
    "clock", "tell the time or date, here or in a place, or convert a time between places",
    {"action": {"enum": ["query", "convert"]},
     **slots("place_name", "place_name_2", "time_zone", "time_zone_2", "date", "time", "timeofday", "event_name",
             "general_frequency")},
    required=["action"],
    intents={"datetime_query": {"action": "query"}, "datetime_convert": {"action": "convert"}},
)
def clock(state: dict, args: dict) -> dict:
    t = now(state)
    home = state["clock"]["place"]
    named = [(k, args[k]) for k in ("place_name", "place_name_2", "time_zone", "time_zone_2") if k in args]
    if args["action"] == "query":
        if "date" in args and not named:
            d = get_date(state, args)
            full = f"{d.strftime('%A').lower()} {MONTHS[d.month - 1]} {ordinal_words(d.day)}"
            return {"text": f"{args['date']} is {full}", "date": d.isoformat()}
        place, offset = _zone(state, named[0][1], named[0][0]) if named else (home, state["world"]["timezones"][home])
        local = t + dt.timedelta(hours=offset - state["world"]["timezones"][home])
        day = f"{local.strftime('%A').lower()} {MONTHS[local.month - 1]} {ordinal_words(local.day)}"
        text = f"it is {format_time(local.hour * 60 + local.minute)} on {day} in {place}"
        return {"text": text, "time": local.strftime("%H:%M"), "place": place}
    minutes = get_time(args, required=True, tool="clock convert")
    if not named:
        raise ToolError("missing argument place_name for clock convert", "missing", "place_name")
    src, src_off = _zone(state, named[0][1], named[0][0]) if len(named) > 1 else (home, state["world"]["timezones"][home])
    dst, dst_off = _zone(state, named[-1][1], named[-1][0])
    out = (minutes + 60 * (dst_off - src_off)) % 1440
    diff = dst_off - src_off
    ahead = "the same time" if diff == 0 else f"{number_to_words(abs(diff))} hour{'s' if abs(diff) != 1 else ''} {'ahead' if diff > 0 else 'behind'}"
    return {"text": f"{format_time(minutes)} in {src} is {format_time(out)} in {dst}, {ahead}", "time": hhmm(out)}
