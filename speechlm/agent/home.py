"""The home-assistant environment's initial state: what the user has (alarms, calendar, lists,
contacts, emails, devices, player) and a read-only ``world`` of local tables the query tools
answer from (weather, time zones, facts, definitions, currency, stocks, recipes, news, events,
places, movies, transport, traffic, takeaway menus, media library, jokes). No network.

``home_state(seed)`` is deterministic; a seed varies the data (weather, prices, clock, which
device is offline, list contents...) so that a model must read tool results instead of
memorising answers. Every value is JSON-serialisable; dates are ISO, times ``HH:MM``.
"""
from __future__ import annotations

import copy
import datetime as dt
import random

CLOCK = "2026-03-02T08:30"  # a monday
HOME_PLACE = "london"

PLACES = ("london", "paris", "new york", "tokyo", "berlin", "madrid", "sydney", "rome", "dublin", "boston",
          "edinburgh", "chicago")
TIMEZONES = {"london": 0, "dublin": 0, "edinburgh": 0, "paris": 1, "berlin": 1, "madrid": 1, "rome": 1,
             "new york": -5, "boston": -5, "chicago": -6, "tokyo": 9, "sydney": 11,
             "gmt": 0, "utc": 0, "eastern time": -5, "central time": -6, "pacific time": -8, "india": 5}
FORECAST_DAYS = 10
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "partly cloudy", "stormy")

FACTS = {
    "paris": "paris is the capital of france and has about two million people",
    "london": "london is the capital of england and has about nine million people",
    "tokyo": "tokyo is the capital of japan and has about fourteen million people",
    "berlin": "berlin is the capital of germany and has about four million people",
    "mount everest": "mount everest is the highest mountain on earth at eight thousand eight hundred metres",
    "the moon": "the moon is about three hundred eighty thousand kilometres from earth",
    "barack obama": "barack obama was the forty fourth president of the united states",
    "albert einstein": "albert einstein was a physicist who developed the theory of relativity",
    "the eiffel tower": "the eiffel tower is three hundred thirty metres tall",
    "the nile": "the nile is the longest river in africa",
    "shakespeare": "shakespeare was an english playwright who wrote hamlet",
    "australia": "australia is a country whose capital is canberra",
}
DEFINITIONS = {
    "serendipity": "finding something good without looking for it",
    "ephemeral": "lasting for a very short time",
    "ubiquitous": "present everywhere",
    "algorithm": "a set of steps to solve a problem",
    "photosynthesis": "how plants make food from sunlight",
    "nostalgia": "a longing for the past",
    "empathy": "understanding the feelings of others",
    "quarantine": "a period of isolation to stop a disease spreading",
    "gravity": "the force that pulls things towards each other",
    "democracy": "government by the people",
}
CURRENCIES = {"dollar": 1.0, "euro": 0.92, "pound": 0.79, "yen": 150.0, "rupee": 83.0, "franc": 0.88,
              "yuan": 7.2, "peso": 17.0, "canadian dollar": 1.35, "australian dollar": 1.52}
STOCKS = {"apple": 182.0, "google": 141.0, "microsoft": 410.0, "amazon": 175.0, "tesla": 190.0,
          "netflix": 600.0, "ibm": 185.0, "nike": 95.0, "disney": 110.0, "tesco": 3.0}
RECIPES = {
    "pancakes": {"ingredients": ["flour", "eggs", "milk"], "minutes": 20},
    "omelette": {"ingredients": ["eggs", "butter", "cheese"], "minutes": 10},
    "spaghetti bolognese": {"ingredients": ["pasta", "beef", "tomatoes"], "minutes": 45},
    "chicken curry": {"ingredients": ["chicken", "curry paste", "rice"], "minutes": 40},
    "lasagna": {"ingredients": ["pasta sheets", "beef", "cheese"], "minutes": 60},
    "tomato soup": {"ingredients": ["tomatoes", "onion", "stock"], "minutes": 30},
    "chocolate cake": {"ingredients": ["flour", "cocoa", "sugar"], "minutes": 50},
    "guacamole": {"ingredients": ["avocado", "lime", "onion"], "minutes": 10},
    "risotto": {"ingredients": ["rice", "stock", "parmesan"], "minutes": 35},
    "banana bread": {"ingredients": ["bananas", "flour", "butter"], "minutes": 65},
}
NEWS = {
    "sports": ["city win the cup final", "a new marathon record in berlin"],
    "politics": ["parliament passes the new budget", "elections called for may"],
    "technology": ["a new phone is launched", "robots help in hospitals"],
    "business": ["shares rise for a third day", "a big merger is announced"],
    "science": ["a new planet is found", "a vaccine trial succeeds"],
    "weather": ["a storm is coming this weekend", "the warmest march on record"],
    "entertainment": ["a new film tops the box office", "the festival line up is out"],
    "health": ["doctors say walk more", "a new hospital opens"],
}
EVENTS = [
    {"name": "jazz night", "type": "concert", "place": "london", "day": 4},
    {"name": "food festival", "type": "festival", "place": "london", "day": 5},
    {"name": "art fair", "type": "exhibition", "place": "paris", "day": 2},
    {"name": "rock concert", "type": "concert", "place": "berlin", "day": 6},
    {"name": "comedy show", "type": "show", "place": "london", "day": 1},
    {"name": "book fair", "type": "fair", "place": "madrid", "day": 3},
    {"name": "film festival", "type": "festival", "place": "rome", "day": 5},
    {"name": "football match", "type": "match", "place": "london", "day": 6},
]
LOCATIONS = [
    {"name": "luigi's", "type": "restaurant", "food": "italian", "place": "london"},
    {"name": "the golden dragon", "type": "restaurant", "food": "chinese", "place": "london"},
    {"name": "spice house", "type": "restaurant", "food": "indian", "place": "london"},
    {"name": "cafe rouge", "type": "cafe", "food": "french", "place": "paris"},
    {"name": "the red lion", "type": "pub", "food": "british", "place": "london"},
    {"name": "sakura", "type": "restaurant", "food": "japanese", "place": "tokyo"},
    {"name": "city gym", "type": "gym", "food": "", "place": "london"},
    {"name": "green park", "type": "park", "food": "", "place": "london"},
    {"name": "the book nook", "type": "shop", "food": "", "place": "london"},
]
MOVIES = [
    {"title": "the long road", "genre": "drama"}, {"title": "space cats", "genre": "comedy"},
    {"title": "night watch", "genre": "horror"}, {"title": "fast lane", "genre": "action"},
    {"title": "love in rome", "genre": "romance"}, {"title": "the last planet", "genre": "science fiction"},
    {"title": "little bear", "genre": "animation"}, {"title": "cold case", "genre": "thriller"},
]
TRANSPORT = {  # mode -> destination -> (departure minute of day, journey minutes, price in pounds)
    "train": {"paris": (555, 140, 90), "manchester": (600, 130, 60), "edinburgh": (540, 270, 80),
              "oxford": (510, 60, 25), "brighton": (570, 65, 20), "cambridge": (525, 50, 22)},
    "bus": {"oxford": (545, 100, 12), "cambridge": (560, 120, 10), "brighton": (590, 130, 9),
            "manchester": (620, 280, 25)},
    "plane": {"paris": (660, 75, 120), "new york": (720, 480, 450), "tokyo": (780, 720, 700),
              "berlin": (690, 110, 110), "madrid": (705, 135, 100), "dublin": (615, 80, 70)},
}
TRAFFIC = {"london": "heavy", "oxford": "light", "cambridge": "moderate", "brighton": "light",
           "manchester": "heavy", "work": "moderate", "the airport": "heavy", "home": "light"}
MENUS = {
    "pizza palace": {"food": "pizza", "delivery": True, "minutes": 30, "open": True},
    "golden wok": {"food": "chinese", "delivery": True, "minutes": 40, "open": True},
    "curry corner": {"food": "indian", "delivery": True, "minutes": 45, "open": True},
    "burger barn": {"food": "burgers", "delivery": False, "minutes": 15, "open": True},
    "sushi bar": {"food": "sushi", "delivery": True, "minutes": 35, "open": False},
    "taco town": {"food": "mexican", "delivery": True, "minutes": 25, "open": True},
}
SONGS = [
    {"title": "yellow", "artist": "coldplay", "genre": "rock"},
    {"title": "fix you", "artist": "coldplay", "genre": "rock"},
    {"title": "hello", "artist": "adele", "genre": "pop"},
    {"title": "someone like you", "artist": "adele", "genre": "pop"},
    {"title": "shake it off", "artist": "taylor swift", "genre": "pop"},
    {"title": "bohemian rhapsody", "artist": "queen", "genre": "rock"},
    {"title": "take five", "artist": "dave brubeck", "genre": "jazz"},
    {"title": "lose yourself", "artist": "eminem", "genre": "hip hop"},
    {"title": "the four seasons", "artist": "vivaldi", "genre": "classical"},
    {"title": "jolene", "artist": "dolly parton", "genre": "country"},
    {"title": "billie jean", "artist": "michael jackson", "genre": "pop"},
    {"title": "one love", "artist": "bob marley", "genre": "reggae"},
]
RADIO = ["bbc radio one", "bbc radio two", "jazz fm", "classic fm", "capital fm", "radio x", "kiss fm", "heart"]
PODCASTS = ["the daily", "science weekly", "history hour", "tech talk", "comedy club", "true crime stories"]
AUDIOBOOKS = [{"title": "harry potter", "author": "j k rowling"}, {"title": "the hobbit", "author": "tolkien"},
              {"title": "pride and prejudice", "author": "jane austen"}, {"title": "dune", "author": "frank herbert"},
              {"title": "the martian", "author": "andy weir"}]
GAMES = ["trivia", "twenty questions", "chess", "word chain", "hangman", "sudoku"]
JOKES = {
    "general": "why did the scarecrow win an award? because he was outstanding in his field",
    "dad": "i used to hate facial hair but then it grew on me",
    "animal": "what do you call a fish with no eyes? a fsh",
    "computer": "why was the computer cold? it left its windows open",
    "food": "why did the tomato blush? it saw the salad dressing",
    "knock knock": "knock knock. who is there? lettuce. lettuce who? lettuce in, it is cold",
}


def _weather(rng: random.Random | None, today: dt.date) -> dict:
    table = {}
    for i, place in enumerate(PLACES):
        days = {}
        for d in range(FORECAST_DAYS):
            if rng is None:
                cond, high = CONDITIONS[(i * 3 + d) % len(CONDITIONS)], 8 + (i * 5 + d * 3) % 20
            else:
                cond, high = rng.choice(CONDITIONS), rng.randint(-2, 32)
            days[(today + dt.timedelta(days=d)).isoformat()] = {"condition": cond, "high": high, "low": high - 6}
        table[place] = days
    return table


def home_state(seed: int | None = None) -> dict:
    """The initial state; ``seed=None`` gives the canonical one, an int a varied one."""
    rng = random.Random(seed) if seed is not None else None
    now = dt.datetime.strptime(CLOCK, "%Y-%m-%dT%H:%M")
    if rng is not None:
        now = now + dt.timedelta(days=rng.randint(0, 27), minutes=15 * rng.randint(-8, 40))
    today = now.date()
    day = lambda n: (today + dt.timedelta(days=n)).isoformat()
    offline_light = rng.choice(["hallway", "garage", "garden"]) if rng else "hallway"
    offline_plug = rng.choice(["lamp", "heater", "fan"]) if rng else "lamp"
    state = {
        "clock": {"now": now.strftime("%Y-%m-%dT%H:%M"), "place": HOME_PLACE},
        "alarms": [{"time": "06:30", "date": day(1), "label": "", "repeat": ""}],
        "calendar": [
            {"event": "dentist appointment", "date": day(2), "time": "10:00", "person": "", "place": ""},
            {"event": "team meeting", "date": day(1), "time": "09:30", "person": "", "place": "office"},
            {"event": "dinner", "date": day(4), "time": "19:00", "person": "sarah", "place": ""},
        ],
        "lists": {"shopping": ["milk", "eggs", "bread"], "to do": ["call the plumber", "pay the bills"],
                  "packing": ["passport", "charger"]},
        "contacts": {
            "john": {"email": "john at example dot com", "phone": "five five five one two three four", "relation": "brother"},
            "sarah": {"email": "sarah at example dot com", "phone": "five five five two two two two", "relation": "wife"},
            "anna": {"email": "anna at work dot com", "phone": "five five five three three three three", "relation": "boss"},
            "mike": {"email": "mike at example dot com", "phone": "five five five four four four four", "relation": "friend"},
            "mary": {"email": "mary at example dot com", "phone": "five five five five five five five", "relation": "mom"},
        },
        "emails": [
            {"folder": "inbox", "from": "john", "to": "me", "subject": "dinner on friday", "date": day(0), "read": False},
            {"folder": "inbox", "from": "anna", "to": "me", "subject": "the project report", "date": day(0), "read": False},
            {"folder": "inbox", "from": "mary", "to": "me", "subject": "photos from the trip", "date": day(-1), "read": True},
        ],
        "devices": {
            "lights": {room: {"on": room in ("kitchen", "living room"), "color": "white", "brightness": 60,
                              "online": room != offline_light}
                       for room in ("kitchen", "living room", "bedroom", "bathroom", "hallway", "garage", "garden")},
            "plugs": {name: {"on": name == "television", "online": name != offline_plug, "place": place}
                      for name, place in (("kettle", "kitchen"), ("lamp", "living room"), ("fan", "bedroom"),
                                          ("heater", "bathroom"), ("television", "living room"),
                                          ("plug", "hallway"))},
            "coffee_machine": {"online": True, "brewing": ""},
            "vacuum": {"online": True, "cleaning": ""},
        },
        "audio": {"volume": 5, "muted": False},
        "player": {"playing": None, "paused": False, "shuffle": False, "repeat": False, "liked": [], "disliked": []},
        "social": {"posts": [], "feed": [
            {"person": "mike", "service": "facebook", "text": "just got back from holiday"},
            {"person": "anna", "service": "twitter", "text": "great talk at the conference today"},
            {"person": "john", "service": "instagram", "text": "new puppy at home"},
        ]},
        "orders": [], "tickets": [], "rides": [],
        "world": {
            "weather": _weather(rng, today), "timezones": dict(TIMEZONES), "facts": dict(FACTS),
            "definitions": dict(DEFINITIONS), "currencies": dict(CURRENCIES), "stocks": dict(STOCKS),
            "recipes": copy.deepcopy(RECIPES), "news": copy.deepcopy(NEWS),
            "events": [{"name": e["name"], "type": e["type"], "place": e["place"], "date": day(e["day"])} for e in EVENTS],
            "locations": copy.deepcopy(LOCATIONS), "movies": copy.deepcopy(MOVIES),
            "transport": {m: {d: list(v) for d, v in t.items()} for m, t in TRANSPORT.items()},
            "traffic": dict(TRAFFIC), "menus": copy.deepcopy(MENUS), "songs": copy.deepcopy(SONGS),
            "radio": list(RADIO), "podcasts": list(PODCASTS), "audiobooks": copy.deepcopy(AUDIOBOOKS),
            "games": list(GAMES), "jokes": dict(JOKES),
        },
    }
    if rng is not None:
        _vary(state, rng)
    return state


def _vary(state: dict, rng: random.Random) -> None:
    """Seeded changes to the values tools report (so answers must come from tool results)."""
    w = state["world"]
    for k in w["currencies"]:
        if k != "dollar":
            w["currencies"][k] = round(w["currencies"][k] * rng.uniform(0.8, 1.2), 2)
    for k in w["stocks"]:
        w["stocks"][k] = float(round(w["stocks"][k] * rng.uniform(0.7, 1.3)))
    for k in w["traffic"]:
        w["traffic"][k] = rng.choice(["light", "moderate", "heavy"])
    for name, menu in w["menus"].items():
        menu["minutes"] = 5 * rng.randint(3, 12)
        menu["open"] = rng.random() > 0.2
    state["audio"]["volume"] = rng.randint(2, 8)
    for device in ("coffee_machine", "vacuum"):
        state["devices"][device]["online"] = rng.random() > 0.15
    for room in state["devices"]["lights"].values():
        room["on"] = rng.random() < 0.5
        room["brightness"] = 10 * rng.randint(2, 9)
    shop = ["milk", "eggs", "bread", "apples", "cheese", "coffee", "rice", "butter", "tomatoes", "onions"]
    state["lists"]["shopping"] = rng.sample(shop, 3)
    for ev in state["calendar"]:
        ev["time"] = f"{rng.randint(8, 19):02d}:{rng.choice([0, 15, 30, 45]):02d}"
    state["alarms"][0]["time"] = f"{rng.randint(5, 8):02d}:{rng.choice([0, 15, 30, 45]):02d}"
