"""Knowledge tools answering from the state's local ``world`` tables: weather, questions (facts,
definitions, currency, stocks, maths), recipes, news and small talk (SLURP scenarios weather, qa,
cooking, news, general)."""
from __future__ import annotations

import operator
import re

from speechlm.agent.spoken import decimal_to_words, number_to_words, words_to_number
from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import clean, get_date, listing, match, need, say_date, today

WET = {"rain": ("rainy", "stormy"), "umbrella": ("rainy", "stormy"), "snow": ("snowy",), "sun": ("sunny",),
       "sunny": ("sunny",), "wind": ("windy", "stormy"), "fog": ("foggy",), "storm": ("stormy",)}


@register_tool(
    "weather", "the weather forecast for a place and day (the next ten days)",
    slots("place_name", "date", "time", "timeofday", "weather_descriptor", "general_frequency"),
    intents={"weather_query": {}},
)
def weather(state: dict, args: dict) -> dict:
    table = state["world"]["weather"]
    place = match(args["place_name"], table, "place", "place_name") if "place_name" in args else state["clock"]["place"]
    day = get_date(state, args, default=today(state))
    key = day.isoformat()
    if key not in table[place]:
        raise ToolError(f"no forecast for {args.get('date', key)}; forecasts cover the next ten days", "invalid", "date")
    f = table[place][key]
    when = say_date(state, key)
    text = f"weather in {place} {when}: {f['condition']}, high of {number_to_words(f['high'])} degrees, low of {number_to_words(f['low'])}"
    if "weather_descriptor" in args:
        word = clean(args["weather_descriptor"])
        conds = next((v for k, v in WET.items() if re.search(rf"\b{k}", word)), None)
        if conds is not None:
            yes = f["condition"] in conds
            text = f"{'yes' if yes else 'no'}, {text}"
    return {"text": text, "place": place, "date": key, **f}


_OPS = {"plus": operator.add, "add": operator.add, "minus": operator.sub, "take away": operator.sub,
        "times": operator.mul, "multiplied by": operator.mul, "divided by": operator.truediv, "over": operator.truediv}


def _maths(expr: str) -> float:
    e = clean(expr).replace("what is ", "").replace("what's ", "")
    symbols = {"+": "plus", "-": "minus", "*": "times", "x": "times", "/": "divided by"}
    e = re.sub(r"(?<=\d)\s*([+*/x-])\s*(?=\d)", lambda m: f" {symbols[m.group(1)]} ", e)
    m = re.fullmatch(r"(?:the )?square root of (.+)", e)
    if m:
        return words_to_number(m.group(1)) ** 0.5
    m = re.fullmatch(r"(.+?) percent of (.+)", e)
    if m:
        return words_to_number(m.group(1)) * words_to_number(m.group(2)) / 100
    for word in sorted(_OPS, key=len, reverse=True):
        if f" {word} " in f" {e} ":
            left, right = e.split(f" {word} ", 1) if f" {word} " in e else (e, "")
            return _OPS[word](words_to_number(left), words_to_number(right))
    raise ValueError(expr)


def _say_number(x: float) -> str:
    return number_to_words(int(x)) if float(x).is_integer() else decimal_to_words(x, 2)


def _currency(state: dict, name: str, arg: str) -> str:
    cur = clean(name).removesuffix("s") if clean(name) not in state["world"]["currencies"] else clean(name)
    return match(cur, state["world"]["currencies"], "currency", arg)


@register_tool(
    "qa", "answer a question: a fact, a definition, an exchange rate, a share price or a sum",
    {"action": {"enum": ["factoid", "definition", "currency", "stock", "maths"]},
     **slots("place_name", "person", "event_name", "business_name", "definition_word", "currency_name",
             "currency_name_2", "change_amount", "expression", "date", "time", "relation", "food_type", "device_type",
             "media_type", "business_type", "general_frequency", "timeofday")},
    required=["action"],
    intents={"qa_factoid": {"action": "factoid"}, "qa_definition": {"action": "definition"},
             "qa_currency": {"action": "currency"}, "qa_stock": {"action": "stock"}, "qa_maths": {"action": "maths"}},
)
def qa(state: dict, args: dict) -> dict:
    w, action = state["world"], args["action"]
    if action == "factoid":
        key = next((k for k in ("place_name", "person", "event_name", "business_name") if k in args), None)
        if key is None:
            raise ToolError("missing argument place_name or person for qa factoid", "missing", "place_name")
        subject = match(args[key], w["facts"], "fact about", key)
        return {"text": w["facts"][subject], "subject": subject}
    if action == "definition":
        word = match(need(args, "definition_word", "qa", "definition"), w["definitions"], "definition of", "definition_word")
        return {"text": f"{word} means {w['definitions'][word]}", "word": word}
    if action == "currency":
        src = _currency(state, need(args, "currency_name", "qa", "currency"), "currency_name")
        dst = _currency(state, args["currency_name_2"], "currency_name_2") if "currency_name_2" in args else (
            "dollar" if src != "dollar" else "pound")
        try:
            amount = words_to_number(args.get("change_amount", "one"))
        except ValueError:
            raise ToolError(f"cannot read the amount {args['change_amount']}", "invalid", "change_amount") from None
        rate = w["currencies"][dst] / w["currencies"][src]
        value = round(amount * rate, 2)
        return {"text": f"{_say_number(amount)} {src} is {_say_number(value)} {dst}", "rate": rate, "value": value}
    if action == "stock":
        company = match(need(args, "business_name", "qa", "stock"), w["stocks"], "company", "business_name")
        return {"text": f"{company} shares are at {_say_number(w['stocks'][company])} dollars", "price": w["stocks"][company]}
    expr = need(args, "expression", "qa", "maths")
    try:
        value = round(_maths(expr), 2)
    except (ValueError, ZeroDivisionError):
        raise ToolError(f"cannot work out {expr}; say it like twelve times four", "invalid", "expression") from None
    return {"text": f"{clean(expr)} is {_say_number(value)}", "value": value}


@register_tool(
    "recipe", "find a recipe: its ingredients and cooking time",
    slots("food_type", "cooking_type", "meal_type", "ingredient", "drink_type", "date", "time", "person"),
    intents={"cooking_recipe": {}},
)
def recipe(state: dict, args: dict) -> dict:
    recipes = state["world"]["recipes"]
    if "food_type" in args:
        dish = match(args["food_type"], recipes, "recipe", "food_type")
    elif "ingredient" in args:
        item = clean(args["ingredient"])
        found = [d for d, r in recipes.items() if any(item in i or i in item for i in r["ingredients"])]
        if not found:
            raise ToolError(f"no recipe with {item}", "not_found", "ingredient")
        dish = found[0]
    else:
        raise ToolError("missing argument food_type for recipe", "missing", "food_type")
    r = recipes[dish]
    return {"text": f"{dish}: {listing(r['ingredients'], '')}, {number_to_words(r['minutes'])} minutes", "dish": dish}


@register_tool(
    "news", "the latest headlines, by topic",
    slots("news_topic", "place_name", "media_type", "date", "time", "timeofday", "person", "business_name",
          "event_name", "relation"),
    intents={"news_query": {}},
)
def news(state: dict, args: dict) -> dict:
    table = state["world"]["news"]
    topic = match(args["news_topic"], table, "news topic", "news_topic") if "news_topic" in args else next(iter(table))
    return {"text": f"{topic} news: {listing(table[topic], '')}", "topic": topic, "headlines": table[topic]}


@register_tool(
    "chat", "small talk: a greeting, a joke, or a reply to an odd request",
    {"action": {"enum": ["greet", "joke", "quirky"]}, **slots("joke_type", "person", "message", "relation", "place_name", "date", "time", "event_name",
                                                                   "food_type", "business_name", "device_type", "media_type")},
    required=["action"],
    intents={"general_greet": {"action": "greet"}, "general_joke": {"action": "joke"}, "general_quirky": {"action": "quirky"}},
)
def chat(state: dict, args: dict) -> dict:
    action = args["action"]
    if action == "greet":
        return {"text": "hello, i am fine, how can i help"}
    if action == "joke":
        jokes = state["world"]["jokes"]
        kind = match(args["joke_type"], jokes, "joke type", "joke_type") if "joke_type" in args else "general"
        return {"text": jokes[kind], "joke_type": kind}
    return {"text": "i am not sure about that, but i am happy to help with something else"}
