"""Home-assistant tools: the intent <-> call mapping over all 59 SLURP intents, argument
validation, offline devices, state never corrupted by an error, query results carrying facts."""
from __future__ import annotations

import json

import pytest

from speechlm.agent.calls import Call, format_call, parse_call
from speechlm.agent.env import Environment, default_state, make_env
from speechlm.agent.intents import INTENTS, SCENARIOS, call_to_intent, entities, intent_table, intent_to_call, scenario_of
from speechlm.agent.spoken import (format_date, format_time, number_to_words, parse_date, parse_duration, parse_time,
                                   words_to_number)
from speechlm.agent.tools import TOOLS, ToolError, get_tool, validate_args

# one request per intent: slots as an SLURP annotation would give them
EXAMPLES = {
    "alarm_set": [("time", "seven thirty am"), ("date", "tomorrow")],
    "alarm_query": [("date", "tomorrow")],
    "alarm_remove": [("time", "six thirty am")],
    "audio_volume_up": [("change_amount", "two")],
    "audio_volume_down": [],
    "audio_volume_mute": [],
    "audio_volume_other": [("change_amount", "to seven")],
    "calendar_set": [("event_name", "lunch"), ("person", "john"), ("date", "friday"), ("time", "one pm")],
    "calendar_query": [("date", "tomorrow")],
    "calendar_remove": [("event_name", "dentist appointment")],
    "cooking_recipe": [("food_type", "pancakes")],
    "datetime_query": [("place_name", "tokyo")],
    "datetime_convert": [("time", "five pm"), ("place_name", "new york")],
    "email_query": [("person", "john")],
    "email_sendemail": [("person", "anna"), ("event_name", "the meeting")],
    "email_querycontact": [("person", "mike"), ("personal_info", "phone number")],
    "email_addcontact": [("person", "lucy"), ("email_address", "lucy at example dot com")],
    "general_quirky": [],
    "general_joke": [("joke_type", "computer")],
    "general_greet": [],
    "iot_hue_lightoff": [("house_place", "kitchen")],
    "iot_hue_lighton": [("house_place", "bedroom")],
    "iot_hue_lightchange": [("color_type", "blue"), ("house_place", "living room")],
    "iot_hue_lightup": [("house_place", "bathroom"), ("change_amount", "twenty percent")],
    "iot_hue_lightdim": [("house_place", "bedroom")],
    "iot_coffee": [("coffee_type", "espresso")],
    "iot_cleaning": [("house_place", "kitchen")],
    "iot_wemo_on": [("device_type", "kettle")],
    "iot_wemo_off": [("device_type", "television")],
    "lists_query": [("list_name", "shopping")],
    "lists_remove": [("list_name", "shopping"), ("item", "milk")],
    "lists_createoradd": [("list_name", "shopping"), ("item", "apples")],
    "music_likeness": [("song_name", "yellow")],
    "music_dislikeness": [("artist_name", "queen")],
    "music_query": [],
    "music_settings": [("player_setting", "shuffle")],
    "news_query": [("news_topic", "sports")],
    "play_music": [("artist_name", "adele")],
    "play_radio": [("radio_name", "jazz fm")],
    "play_podcasts": [("podcast_name", "history hour")],
    "play_audiobook": [("audiobook_name", "the hobbit")],
    "play_game": [("game_name", "trivia")],
    "qa_factoid": [("place_name", "paris")],
    "qa_definition": [("definition_word", "serendipity")],
    "qa_currency": [("currency_name", "dollars"), ("currency_name", "euros")],
    "qa_stock": [("business_name", "apple")],
    "qa_maths": [("expression", "twelve times four")],
    "recommendation_events": [("place_name", "london")],
    "recommendation_locations": [("food_type", "italian")],
    "recommendation_movies": [("movie_type", "comedy")],
    "social_post": [("media_type", "twitter"), ("message", "hello world")],
    "social_query": [("person", "mike")],
    "takeaway_query": [("business_name", "pizza palace")],
    "takeaway_order": [("food_type", "pizza")],
    "transport_query": [("transport_type", "train"), ("place_name", "paris")],
    "transport_ticket": [("transport_type", "train"), ("place_name", "oxford"), ("date", "friday")],
    "transport_taxi": [("place_name", "the airport")],
    "transport_traffic": [("place_name", "oxford")],
    "weather_query": [("place_name", "paris"), ("date", "tomorrow")],
}
# intents whose call changes the user's state (the others only read it)
CHANGES = {"alarm_set", "alarm_remove", "audio_volume_up", "audio_volume_down", "audio_volume_mute", "audio_volume_other",
           "calendar_set", "calendar_remove", "email_sendemail", "email_addcontact", "iot_hue_lightoff", "iot_hue_lighton",
           "iot_hue_lightchange", "iot_hue_lightup", "iot_hue_lightdim", "iot_coffee", "iot_cleaning", "iot_wemo_on",
           "iot_wemo_off", "lists_remove", "lists_createoradd", "music_likeness", "music_dislikeness", "music_settings",
           "play_music", "play_radio", "play_podcasts", "play_audiobook", "play_game", "social_post", "takeaway_order",
           "transport_ticket", "transport_taxi"}


def test_label_set_is_slurps():
    assert len(SCENARIOS) == 18 and len(INTENTS) == 59 and len(set(INTENTS)) == 59
    assert {scenario_of(i) for i in INTENTS} == set(SCENARIOS)
    assert set(intent_table()) == set(INTENTS) == set(EXAMPLES)


@pytest.mark.parametrize("intent", INTENTS)
def test_intent_call_round_trip_and_execution(intent):
    slots = EXAMPLES[intent]
    call = intent_to_call(intent, slots)
    text = format_call(call)
    back_intent, back_slots = call_to_intent(parse_call(text))
    assert back_intent == intent and sorted(back_slots) == sorted(slots)
    assert sorted((e["type"], e["filler"]) for e in entities(call)) == sorted(slots)
    env = make_env()
    before = env.snapshot()
    result = env.execute(text)
    assert result["text"].strip() and "|" not in result["text"]
    json.dumps(env.state)  # the state stays JSON-serialisable
    assert env.state["world"] == before["world"]  # no tool writes the read-only tables
    assert (env.state != before) == (intent in CHANGES), Environment.diff(before, env.state)


def test_every_call_names_exactly_one_intent():
    table = intent_table()
    for intent, (tool, fixed) in table.items():
        same = [i for i, (t, f) in table.items() if t == tool and all(fixed.get(k) == v for k, v in f.items())
                and all(f.get(k) == v for k, v in fixed.items())]
        assert same == [intent]
        if fixed:  # the fixed argument is an enum of the tool, one value per intent
            for key, value in fixed.items():
                assert value in get_tool(tool).parameters["properties"][key]["enum"]
    with pytest.raises(ValueError, match="matches no intent"):
        call_to_intent(Call("lights", {"action": "sideways"}))
    with pytest.raises(KeyError, match="unknown intent"):
        intent_to_call("iot_hue_lightsoff", [])


def test_tool_schemas_are_closed_string_objects():
    for name in TOOLS:
        p = TOOLS.get(name).parameters
        assert p["type"] == "object" and p["additionalProperties"] is False
        assert set(p["required"]) <= set(p["properties"])
        assert all(v["type"] == "string" for v in p["properties"].values())


@pytest.mark.parametrize("call, kind, arg, words", [
    (Call("plug", {"action": "on"}), "missing", "device_type", "missing argument device_type"),
    (Call("lights", {"action": "off", "room": "kitchen"}), "unknown", "room", "unknown argument room"),
    (Call("lights", {"action": "sideways"}), "invalid", "action", "use one of on, off, change, up, dim"),
    (Call("alarm", {"action": "set", "time": "blue"}), "invalid", "time", "cannot read the time blue"),
    (Call("alarm", {"action": "set"}), "missing", "time", "missing argument time"),
    (Call("lights", {"action": "off", "house_place": "hallway"}), "offline", "house_place", "the hallway light is offline"),
    (Call("plug", {"action": "on", "device_type": "lamp"}), "offline", "device_type", "offline"),
    (Call("lists", {"action": "remove", "list_name": "shopping", "item": "caviar"}), "not_found", "item", "no item"),
    (Call("weather", {"place_name": "atlantis"}), "not_found", "place_name", "no place called atlantis"),
    (Call("takeaway", {"action": "order", "business_name": "sushi bar"}), "offline", "business_name", "closed"),
    (Call("volume", {"action": "up", "change_amount": "fifty"}), "invalid", "change_amount", "out of range"),
    (Call("lightz", {"action": "off"}), "unknown_tool", None, "did you mean lights"),
])
def test_bad_calls_raise_clear_errors_and_leave_state_unchanged(call, kind, arg, words):
    env = make_env()
    env.execute(Call("alarm", {"action": "set", "time": "nine pm"}))  # a non-default state to protect
    before = env.snapshot()
    with pytest.raises(ToolError) as err:
        env.execute(call)
    assert err.value.kind == kind and err.value.arg == arg and words in str(err.value)
    assert env.state == before
    ok, text = env.respond(call)
    assert not ok and text.startswith("error: ") and env.state == before


def test_tool_error_midway_does_not_leave_partial_changes():
    # vacuum's function changes nothing before failing, but a tool that raised after writing to
    # the state must not leak that write: check with a tool that fails after a mutation
    env = make_env()
    before = env.snapshot()

    def half_then_fail(state, args):
        state["alarms"].clear()
        raise ToolError("boom")

    tool = get_tool("coffee")
    original = tool.fn
    tool.fn = half_then_fail
    try:
        with pytest.raises(ToolError):
            env.execute(Call("coffee", {}))
    finally:
        tool.fn = original
    assert env.state == before


def test_validate_args_types():
    tool = get_tool("lights")
    with pytest.raises(ToolError, match="must be words"):
        validate_args(tool, {"action": "on", "house_place": 3})
    with pytest.raises(ToolError, match="is empty"):
        validate_args(tool, {"action": "on", "house_place": " "})
    validate_args(tool, {"action": "on"})


def test_offline_rooms_are_skipped_by_whole_house_commands():
    env = make_env()
    result = env.execute("lights action=on")
    assert "hallway" not in result["rooms"] and "kitchen" in result["rooms"]
    assert not env.state["devices"]["lights"]["hallway"]["on"]


def test_query_results_state_the_facts():
    env = make_env()
    w = env.state["world"]
    tomorrow = sorted(w["weather"]["paris"])[1]
    f = w["weather"]["paris"][tomorrow]
    text = env.execute("weather place_name=paris ; date=tomorrow")["text"]
    assert f["condition"] in text and number_to_words(f["high"]) in text
    r = env.execute("qa action=currency ; change_amount=ten ; currency_name=pounds ; currency_name_2=dollars")
    assert r["value"] == round(10 / w["currencies"]["pound"], 2)
    assert env.execute("qa action=maths ; expression=twelve times four")["text"].endswith("forty eight")
    assert env.execute("qa action=maths ; expression=7 x 6")["value"] == 42
    assert "team meeting" in env.execute("calendar action=query ; date=tomorrow")["text"]
    assert "it is eight thirty am" in env.execute("clock action=query")["text"]
    env.set_clock("2026-03-02T22:05")
    assert "ten oh five pm" in env.execute("clock action=query")["text"]
    assert env.execute("clock action=convert ; place_name=london ; place_name_2=tokyo ; time=nine am")["time"] == "18:00"


def test_state_effects():
    env = make_env()
    env.execute("alarm action=set ; time=seven am ; date=friday")
    assert {"time": "07:00", "date": "2026-03-06", "label": "", "repeat": ""} in env.state["alarms"]
    env.execute("lights action=change ; color_type=red ; house_place=the bedroom")
    assert env.state["devices"]["lights"]["bedroom"]["color"] == "red"
    env.execute("lists action=add ; list_name=party ; item=balloons")
    assert env.state["lists"]["party"] == ["balloons"]
    env.execute("volume action=set ; change_amount=three")
    assert env.state["audio"]["volume"] == 3


def test_seeded_states_and_save_load_diff(tmp_path):
    assert default_state(7) == default_state(7) and default_state(7) != default_state(8)
    assert default_state() == default_state(None)
    env = make_env(state=default_state(3))
    env.execute("plug action=on ; device_type=kettle")
    env.save(tmp_path / "env.json")
    again = Environment.load(tmp_path / "env.json")
    assert again.state == env.state
    diff = Environment.diff(default_state(3), env.state)
    assert diff == ["devices.plugs.kettle.on: false -> true"]
    env.reset()
    assert env.state == default_state()


def test_spoken_times_dates_numbers_round_trip():
    for minutes in range(1440):
        assert parse_time(format_time(minutes)) == minutes
    for n in list(range(0, 1000)) + [1000, 2026, 15_000, 123_456]:
        assert words_to_number(number_to_words(n)) == n
    import datetime as dt

    today = dt.date(2026, 3, 2)
    for k in range(60):
        d = today + dt.timedelta(days=k)
        assert parse_date(format_date(d, today), today) == d
    assert parse_time("half past six", "evening") == 18 * 60 + 30
    assert parse_time("quarter to eight") == 7 * 60 + 45
    assert parse_date("next monday", today) == dt.date(2026, 3, 9)
    with pytest.raises(ValueError):
        parse_time("thirteen pm")


def test_dict_calls_with_non_word_values_are_refused():
    env = make_env()
    before = env.snapshot()
    with pytest.raises(ToolError, match="argument change_amount of volume must be words"):
        env.execute({"name": "volume", "args": {"action": "set", "change_amount": 7}})
    assert env.state == before


def test_seeded_offline_devices_refuse():
    seeds = [s for s in range(40) if not default_state(s)["devices"]["coffee_machine"]["online"]]
    assert seeds, "some seeded homes have the coffee machine offline"
    env = make_env(state=default_state(seeds[0]))
    before = env.snapshot()
    ok, text = env.respond("coffee coffee_type=latte")
    assert not ok and text == "error: the coffee machine is offline" and env.state == before


def test_relative_times_use_the_clock():
    env = make_env()  # the clock says 08:30 on 2026-03-02
    env.execute("alarm action=set ; time=in twenty minutes")
    env.execute("alarm action=set ; time=an hour")
    assert {(a["date"], a["time"]) for a in env.state["alarms"]} >= {("2026-03-02", "08:50"), ("2026-03-02", "09:30")}
    env.set_clock("2026-03-02T23:50")
    env.execute("alarm action=set ; time=in half an hour")  # past midnight: tomorrow
    assert ("2026-03-03", "00:20") in {(a["date"], a["time"]) for a in env.state["alarms"]}
    assert parse_time("a quarter past seven") == 7 * 60 + 15 and parse_time("half seven") == 7 * 60 + 30


def test_a_time_relative_to_another_is_worked_out():
    assert parse_time("three hours before eleven forty five am") == 8 * 60 + 45
    assert parse_time("an hour and a half after ten pm") == 23 * 60 + 30
    assert parse_time("half an hour before midnight") == 23 * 60 + 30
    assert parse_time("ten minutes after six") == 6 * 60 + 10  # read either way: the same time
    assert parse_time("quarter after seven") == 7 * 60 + 15  # a clock time, no duration
    assert parse_duration("forty five minutes") == 45 and parse_duration("two hours") == 120
    for bad in ("three days before noon", "an hour before lunch", "zero minutes"):
        with pytest.raises(ValueError):
            parse_time(bad) if "before" in bad else parse_duration(bad)
    env = make_env()
    env.execute("alarm action=set ; time=forty five minutes before seven pm ; date=friday")
    assert any(a["time"] == "18:15" for a in env.state["alarms"])


FUZZ_VALUES = ["seven am", "tomorrow", "friday", "blue", "kitchen", "the bedroom", "paris", "twenty percent", "to five",
               "zero", "john", "my brother", "milk", "shopping", "pizza", "train", "oxford", "dollars", "apple",
               "twelve divided by zero", "the", "next week", "in ten minutes", "noon", "shuffle", "adele", "x",
               "minus three", "march thirty second", "evening", "facebook", "phone number", "9:75", "25:00"]


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_random_calls_give_a_result_or_a_tool_error_never_a_crash(seed):
    import random

    rng = random.Random(seed or 0)
    env = make_env(state=default_state(seed))
    for name in TOOLS.names():
        tool = TOOLS.get(name)
        props, required = tool.parameters["properties"], tool.parameters["required"]
        for _ in range(15):
            args = {k: rng.choice(spec.get("enum") or FUZZ_VALUES) for k, spec in props.items()
                    if (k in required and rng.random() < 0.95) or rng.random() < 0.25}
            before = env.snapshot()
            try:
                result = env.execute(Call(name, args))
            except ToolError as e:
                assert str(e) and env.state == before
            else:
                assert isinstance(result["text"], str) and result["text"].strip()
                json.dumps(env.state)


def test_a_new_tool_is_one_registration():
    from speechlm.agent.tools import register_tool

    @register_tool("echo_test", "say the words back", {"words": {}}, required=["words"])
    def echo(state, args):
        state.setdefault("echoes", []).append(args["words"])
        return {"text": args["words"]}

    try:
        env = make_env()
        assert env.respond("echo_test words=hello there") == (True, "ok: hello there")
        assert env.state["echoes"] == ["hello there"]
        assert env.respond("echo_test") == (False, "error: missing argument words for echo_test")
        assert "echo_test" not in {t for t, _ in intent_table().values()}
    finally:
        TOOLS._items.pop("echo_test")


def test_tool_signatures_for_help_texts():
    assert get_tool("plug").signature() == "plug action=on|off ; device_type ; [house_place] ; [time] ; [date] ; [timeofday]"
    assert all(get_tool(n).signature().startswith(n) for n in TOOLS)
