"""Service tools: recommendations, takeaway, transport and lists (SLURP scenarios recommendation,
takeaway, transport, lists)."""
from __future__ import annotations

from speechlm.agent.spoken import format_time, number_to_words
from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import clean, get_date, get_time, listing, match, need, say_date, today

MODES = {"train": "train", "trains": "train", "bus": "bus", "buses": "bus", "coach": "bus", "plane": "plane",
         "flight": "plane", "flights": "plane", "fly": "plane"}


@register_tool(
    "recommend", "recommend events, places or movies",
    {"action": {"enum": ["events", "locations", "movies"]},
     **slots("place_name", "date", "time", "event_name", "business_type", "business_name", "food_type", "movie_type",
             "movie_name", "timeofday", "meal_type", "person", "relation")},
    required=["action"],
    intents={"recommendation_events": {"action": "events"}, "recommendation_locations": {"action": "locations"},
             "recommendation_movies": {"action": "movies"}},
)
def recommend(state: dict, args: dict) -> dict:
    w, action = state["world"], args["action"]
    if action == "movies":
        genres = sorted({m["genre"] for m in w["movies"]})
        genre = match(args["movie_type"], genres, "movie genre", "movie_type") if "movie_type" in args else None
        chosen = [m["title"] for m in w["movies"] if genre is None or m["genre"] == genre][:2]
        return {"text": f"you could watch {listing(chosen, '')}", "movies": chosen}
    place = match(args["place_name"], sorted({e["place"] for e in w["events"] + w["locations"]}), "place", "place_name") \
        if "place_name" in args else state["clock"]["place"]
    if action == "events":
        day = get_date(state, args)
        kind = clean(args["event_name"]) if "event_name" in args else None
        chosen = [e for e in w["events"] if e["place"] == place and (day is None or e["date"] == day.isoformat())
                  and (kind is None or kind.rstrip("s") in (e["type"], e["name"]) or e["type"] in kind)]
        said = [f"{e['name']} {say_date(state, e['date'])}" for e in chosen[:2]]
        return {"text": f"in {place}: {listing(said, 'no events found')}", "events": chosen[:2]}
    btype = clean(args["business_type"]) if "business_type" in args else None
    food = clean(args["food_type"]) if "food_type" in args else None
    chosen = [x for x in w["locations"] if x["place"] == place and (btype is None or x["type"] == btype.rstrip("s"))
              and (food is None or x["food"] == food)]
    said = [x["name"] + (f", {x['food']} {x['type']}" if x["food"] else f", a {x['type']}") for x in chosen[:2]]
    return {"text": f"in {place}: {listing(said, 'nothing found')}", "places": [x["name"] for x in chosen[:2]]}


def _restaurant(state: dict, args: dict, tool: str) -> str:
    menus = state["world"]["menus"]
    if "business_name" in args:
        return match(args["business_name"], menus, "restaurant", "business_name")
    if "food_type" in args:
        food = clean(args["food_type"])
        found = [n for n, m in menus.items() if m["food"] in (food, food.rstrip("s")) or food in n]
        if found:
            return found[0]
        raise ToolError(f"no takeaway sells {food}", "not_found", "food_type")
    raise ToolError(f"missing argument business_name for {tool}", "missing", "business_name")


@register_tool(
    "takeaway", "ask about a takeaway or order food from it",
    {"action": {"enum": ["query", "order"]}, **slots("business_name", "food_type", "order_type", "date", "time", "business_type", "place_name",
                                                                    "meal_type", "timeofday")},
    required=["action"],
    intents={"takeaway_query": {"action": "query"}, "takeaway_order": {"action": "order"}},
)
def takeaway(state: dict, args: dict) -> dict:
    name = _restaurant(state, args, f"takeaway {args['action']}")
    menu = state["world"]["menus"][name]
    if args["action"] == "query":
        deliver = "delivers" if menu["delivery"] else "does not deliver"
        status = f"open, {deliver}, about {number_to_words(menu['minutes'])} minutes" if menu["open"] else "closed now"
        return {"text": f"{name} sells {menu['food']}, {status}", "restaurant": name, **menu}
    if not menu["open"]:
        raise ToolError(f"{name} is closed now", "offline", "business_name")
    mode = clean(args.get("order_type", "delivery"))
    mode = "pick up" if mode in ("pick up", "pickup", "collection", "collect", "takeaway", "take away") else "delivery"
    if mode == "delivery" and not menu["delivery"]:
        raise ToolError(f"{name} does not deliver; order for pick up", "invalid", "order_type")
    order = {"restaurant": name, "food": clean(args.get("food_type", menu["food"])), "mode": mode}
    state["orders"].append(order)
    return {"text": f"ordered {order['food']} from {name} for {mode}, ready in {number_to_words(menu['minutes'])} minutes",
            "order": order}


def _mode(args: dict) -> str:
    kind = clean(args.get("transport_type", "train"))
    if kind not in MODES:
        raise ToolError(f"unknown transport_type {kind}; use train, bus or plane", "invalid", "transport_type")
    return MODES[kind]


@register_tool(
    "transport", "timetables, tickets, taxis and traffic",
    {"action": {"enum": ["query", "ticket", "taxi", "traffic"]},
     **slots("transport_type", "place_name", "place_name_2", "date", "time", "timeofday", "transport_agency",
             "transport_name", "transport_descriptor", "business_name", "general_frequency", "person", "relation")},
    required=["action"],
    intents={"transport_query": {"action": "query"}, "transport_ticket": {"action": "ticket"},
             "transport_taxi": {"action": "taxi"}, "transport_traffic": {"action": "traffic"}},
)
def transport(state: dict, args: dict) -> dict:
    w, action = state["world"], args["action"]
    dest_key = "place_name_2" if "place_name_2" in args else "place_name"  # "from a to b": the last place is the goal
    if action == "traffic":
        place = match(args[dest_key], w["traffic"], "route", dest_key) if dest_key in args else state["clock"]["place"]
        return {"text": f"traffic to {place} is {w['traffic'][place]}", "traffic": w["traffic"][place]}
    if action == "taxi":
        dest = clean(need(args, "place_name", "transport", "taxi") if dest_key == "place_name" else args[dest_key])
        minutes = get_time(args, state=state)
        ride = {"to": dest, "time": "now" if minutes is None else format_time(minutes)}
        state["rides"].append(ride)
        return {"text": f"taxi booked to {dest} {'now, arriving in ten minutes' if minutes is None else 'for ' + ride['time']}",
                "ride": ride}
    mode = _mode(args)
    table = w["transport"][mode]
    dest = match(need(args, "place_name", "transport", action) if dest_key == "place_name" else args[dest_key],
                 table, f"{mode} destination", dest_key)
    depart, journey, price = table[dest]
    day = get_date(state, args, default=today(state))
    when = f"{say_date(state, day.isoformat())} at {format_time(depart)}"
    if action == "query":
        return {"text": f"the {mode} to {dest} leaves {when} and takes {number_to_words(journey)} minutes, "
                        f"{number_to_words(price)} pounds", "depart": depart, "price": price}
    ticket = {"mode": mode, "to": dest, "date": day.isoformat(), "time": f"{depart // 60:02d}:{depart % 60:02d}"}
    state["tickets"].append(ticket)
    return {"text": f"booked a {mode} ticket to {dest} {when} for {number_to_words(price)} pounds", "ticket": ticket}


@register_tool(
    "lists", "read, add to, create or remove lists and their items",
    {"action": {"enum": ["query", "remove", "add"]},
     **slots("list_name", "item", "food_type", "date", "time", "timeofday", "person", "relation", "event_name")},
    required=["action"],
    intents={"lists_query": {"action": "query"}, "lists_remove": {"action": "remove"}, "lists_createoradd": {"action": "add"}},
)
def lists(state: dict, args: dict) -> dict:
    table, action = state["lists"], args["action"]
    item_key = "item" if "item" in args else "food_type" if "food_type" in args else None  # SLURP tags foods
    if action == "query" and "list_name" not in args:
        return {"text": f"your lists: {listing(sorted(table), 'none')}", "lists": sorted(table)}
    if action == "add":
        name = clean(need(args, "list_name", "lists", "add")).removesuffix(" list")
        name = match(name, table, "list", "list_name") if any(k == name or k == name.rstrip("s") for k in table) else name
        items = table.setdefault(name, [])
        if item_key is None:
            return {"text": f"created the {name} list", "list": name}
        item = clean(args[item_key])
        if item not in items:
            items.append(item)
        return {"text": f"added {item} to the {name} list", "list": name, "item": item}
    name = match(need(args, "list_name", "lists", action), table, "list", "list_name")
    if action == "query":
        return {"text": f"the {name} list has {listing(table[name], 'nothing')}", "items": table[name]}
    if item_key is not None:
        item = match(args[item_key], table[name], f"item on the {name} list", item_key)
        table[name].remove(item)
        return {"text": f"removed {item} from the {name} list", "list": name, "item": item}
    del table[name]
    return {"text": f"deleted the {name} list", "list": name}
