"""Home devices: lights, smart plugs, the coffee machine, the vacuum and the volume (SLURP iot, audio).

A device marked ``online: false`` refuses every command with an ``offline`` ToolError, so an
agent can learn to report it (or try another room) instead of claiming success.
"""
from __future__ import annotations

import re

from speechlm.agent.spoken import format_time, number_to_words, words_to_number
from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import clean, get_time, match, need

COLORS = ("white", "warm white", "red", "orange", "yellow", "green", "blue", "purple", "pink", "cyan")
PLUG_ALIASES = {"tv": "television", "telly": "television", "socket": "plug", "smart plug": "plug", "wemo": "plug",
                "wemo plug": "plug", "smart socket": "plug", "outlet": "plug", "power socket": "plug", "wemo socket": "plug"}
ALL_ROOMS = ("house", "home", "all", "everywhere", "all rooms", "the whole house", "whole house")


def _amount(args: dict, default: int, scale: int) -> tuple[int, bool]:
    """``(amount, absolute)`` from ``change_amount`` (``twenty percent``, ``by two``, ``to five``)."""
    if "change_amount" not in args:
        return default, False
    text = clean(args["change_amount"])
    absolute = text.startswith("to ")
    text = re.sub(r"^(to|by) ", "", text).replace("per cent", "percent")
    percent = text.endswith("percent") or text.endswith("%")
    text = text.removesuffix("percent").removesuffix("%").strip()
    try:
        value = int(words_to_number(text))
    except ValueError:
        raise ToolError(f"cannot read the change_amount {args['change_amount']}; say a number like twenty percent",
                        "invalid", "change_amount") from None
    if percent and scale != 100:
        value = round(value * scale / 100)
    if not 0 <= value <= scale:
        raise ToolError(f"change_amount {args['change_amount']} is out of range; use zero to {number_to_words(scale)}"
                        + (" percent" if scale == 100 else ""), "invalid", "change_amount")
    return value, absolute


def _rooms(state: dict, args: dict) -> list[str]:
    lights = state["devices"]["lights"]
    place = args.get("house_place")
    if place is None or clean(place) in ALL_ROOMS:
        return [r for r, d in lights.items() if d["online"]]  # a whole-house command skips offline rooms
    room = match(place, lights, "room", "house_place")
    if not lights[room]["online"]:
        raise ToolError(f"the {room} light is offline", "offline", "house_place")
    return [room]


@register_tool(
    "lights", "switch, colour, brighten or dim the lights of a room (or all rooms)",
    {"action": {"enum": ["on", "off", "change", "up", "dim"]}, **slots("house_place", "color_type", "change_amount", "device_type", "time", "date", "timeofday",
                                                                        "general_frequency")},
    required=["action"],
    intents={"iot_hue_lighton": {"action": "on"}, "iot_hue_lightoff": {"action": "off"},
             "iot_hue_lightchange": {"action": "change"}, "iot_hue_lightup": {"action": "up"},
             "iot_hue_lightdim": {"action": "dim"}},
)
def lights(state: dict, args: dict) -> dict:
    action = args["action"]
    color = None
    if action == "change":
        color = match(need(args, "color_type", "lights", "change"), COLORS, "colour", "color_type")
    amount, absolute = _amount(args, 20, 100) if action in ("up", "dim") else (0, False)
    rooms = _rooms(state, args)
    table = state["devices"]["lights"]
    for room in rooms:
        d = table[room]
        if action in ("on", "off"):
            d["on"] = action == "on"
        elif action == "change":
            d["color"], d["on"] = color, True
        else:
            target = amount if absolute else d["brightness"] + (amount if action == "up" else -amount)
            d["brightness"], d["on"] = max(0, min(100, target)), True
    where = f"the {rooms[0]}" if len(rooms) == 1 and "house_place" in args else "all rooms"
    if action in ("on", "off"):
        text = f"lights {action} in {where}"
    elif action == "change":
        text = f"lights in {where} are now {color}"
    else:
        level = table[rooms[0]]["brightness"]
        text = f"lights in {where} {'brightened' if action == 'up' else 'dimmed'}" + (
            f" to {number_to_words(level)} percent" if len(rooms) == 1 else "")
    return {"text": text, "rooms": rooms}


@register_tool(
    "plug", "switch a smart plug (kettle, lamp, fan, heater, television) on or off",
    {"action": {"enum": ["on", "off"]}, **slots("device_type", "house_place", "time", "date", "timeofday")},
    required=["action", "device_type"],
    intents={"iot_wemo_on": {"action": "on"}, "iot_wemo_off": {"action": "off"}},
)
def plug(state: dict, args: dict) -> dict:
    plugs = state["devices"]["plugs"]
    name = match(PLUG_ALIASES.get(clean(args["device_type"]), args["device_type"]), plugs, "plug", "device_type")
    if not plugs[name]["online"]:
        raise ToolError(f"the {name} plug is offline", "offline", "device_type")
    plugs[name]["on"] = args["action"] == "on"
    return {"text": f"the {name} is {args['action']}", "device": name}


@register_tool(
    "coffee", "make coffee", slots("coffee_type", "time", "timeofday", "date", "device_type", "house_place", "general_frequency"),
    intents={"iot_coffee": {}},
)
def coffee(state: dict, args: dict) -> dict:
    machine = state["devices"]["coffee_machine"]
    if not machine["online"]:
        raise ToolError("the coffee machine is offline", "offline", "device_type")
    kind = clean(args.get("coffee_type", "coffee"))
    minutes = get_time(args, state=state)
    machine["brewing"] = kind
    when = "" if minutes is None else " at " + format_time(minutes)
    return {"text": f"making {kind}{when}", "coffee": kind}


@register_tool(
    "vacuum", "start the robot vacuum cleaner, in a room or everywhere",
    slots("house_place", "device_type", "time", "date", "timeofday", "general_frequency"),
    intents={"iot_cleaning": {}},
)
def vacuum(state: dict, args: dict) -> dict:
    robot = state["devices"]["vacuum"]
    if not robot["online"]:
        raise ToolError("the vacuum cleaner is offline", "offline", "device_type")
    place = args.get("house_place")
    rooms = list(state["devices"]["lights"])
    room = "the whole house" if place is None or clean(place) in ALL_ROOMS else match(place, rooms, "room", "house_place")
    robot["cleaning"] = room
    return {"text": f"cleaning {room if room == 'the whole house' else 'the ' + room}", "room": room}


@register_tool(
    "volume", "turn the volume up or down, mute it, or set it (zero to ten)",
    {"action": {"enum": ["up", "down", "mute", "set"]}, **slots("change_amount", "device_type", "house_place", "media_type")},
    required=["action"],
    intents={"audio_volume_up": {"action": "up"}, "audio_volume_down": {"action": "down"},
             "audio_volume_mute": {"action": "mute"}, "audio_volume_other": {"action": "set"}},
)
def volume(state: dict, args: dict) -> dict:
    audio = state["audio"]
    action = args["action"]
    if action == "mute":
        audio["muted"] = True
        return {"text": "volume muted", "volume": audio["volume"]}
    if action == "set" and "change_amount" not in args:
        return {"text": f"the volume is {number_to_words(audio['volume'])}" + (" and muted" if audio["muted"] else ""),
                "volume": audio["volume"]}
    amount, absolute = _amount(args, 1, 10)
    if action == "set":
        absolute = True
    level = amount if absolute else audio["volume"] + (amount if action == "up" else -amount)
    audio["volume"], audio["muted"] = max(0, min(10, level)), False
    return {"text": f"volume {'set' if action == 'set' else action} to {number_to_words(audio['volume'])}", "volume": audio["volume"]}
