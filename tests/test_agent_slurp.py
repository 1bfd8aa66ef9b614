"""The SLURP importer on a small SLURP-format file written here (never SLURP's own data)."""
from __future__ import annotations

import json

import pytest

from speechlm.agent.calls import Call
from speechlm.agent.episodes import read_episodes
from speechlm.agent.intents import call_to_intent
from speechlm.agent.slurp import import_slurp, parse_annotation

ROWS = [
    {"slurp_id": 101, "sentence": "wake me up at five am this week",
     "sentence_annotation": "wake me up at [time : five am] [date : this week]",
     "intent": "alarm_set", "scenario": "alarm", "action": "set",
     "recordings": [{"file": "audio-1.flac"}, {"file": "audio-2.flac"}]},
    # the intent field is malformed: the importer must build alarm_query from scenario and action
    {"slurp_id": 102, "sentence": "What alarms do I have?", "sentence_annotation": "what alarms do i have",
     "intent": "alarm_queryy", "scenario": "alarm", "action": "query", "recordings": [{"file": "audio-3.flac"}]},
    {"slurp_id": 103, "sentence": "turn the lights in the kitchen blue",
     "sentence_annotation": "turn the lights in the [house_place : kitchen] [ color_type :  blue ]",
     "intent": "iot_hue_lightchange", "scenario": "iot", "action": "hue_lightchange", "recordings": []},
    {"slurp_id": 104, "sentence": "what's the weather like in paris and in rome",
     "sentence_annotation": "what's the weather like in [place_name : paris] and in [place_name : rome]",
     "intent": "weather_query", "scenario": "weather", "action": "query", "recordings": [{"file": "audio-5.flac"}]},
    {"slurp_id": 105, "sentence": "play my party playlist",
     "sentence_annotation": "play my [playlist_name : party] playlist [time_zone : gmt]",
     "intent": "play_music", "scenario": "play", "action": "music", "recordings": []},
]


@pytest.fixture
def slurp_file(tmp_path):
    path = tmp_path / "slurp_small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_parse_annotation():
    assert parse_annotation("wake me at [time : five am] [date : today]") == \
        ("wake me at five am today", [("time", "five am"), ("date", "today")])
    assert parse_annotation("[ house_place :  Living  Room ] lights") == ("Living Room lights".lower(), [("house_place", "living room")])
    assert parse_annotation("no slots here") == ("no slots here", [])
    with pytest.raises(ValueError, match="bracket"):
        parse_annotation("wake me at [time : five am")
    with pytest.raises(ValueError, match="bracket"):
        parse_annotation("wake me at [five am]")


def test_import_maps_intents_and_slots(slurp_file):
    eps = {e.meta["slurp_id"]: e for e in import_slurp(slurp_file)}
    assert set(eps) == {"101", "102", "103", "104", "105"}
    assert eps["102"].intent == "alarm_query"  # from scenario_action, not the malformed intent field
    assert eps["101"].slots == [["time", "five am"], ["date", "this week"]]
    assert eps["103"].slots == [["house_place", "kitchen"], ["color_type", "blue"]]
    assert eps["101"].text == "wake me up at five am this week"
    assert eps["102"].text == "what alarms do i have"  # lower case, no punctuation (as generated episodes)
    for e in eps.values():
        assert len(e.expected_calls) == 1 and e.kind == "atomic" and e.split == "test"
        intent, slots = call_to_intent(Call.from_dict(e.expected_calls[0]))
        assert intent == e.intent and sorted(slots) == sorted(map(tuple, e.slots))
    # two slots of one type: the second becomes place_name_2, and maps back
    assert eps["104"].expected_calls[0]["args"] == {"place_name": "paris", "place_name_2": "rome"}
    assert eps["103"].expected_calls[0] == {"name": "lights", "args": {"action": "change", "house_place": "kitchen",
                                                                        "color_type": "blue"}}
    # a slot type the tool does not take is kept (so SLU-F1 sees it) and the tool error recorded
    assert "time_zone" in eps["105"].expected_calls[0]["args"] and "unknown argument" in eps["105"].meta["tool_error"]
    assert "tool_error" not in eps["103"].meta
    # an accepted call gives the expected state (the kitchen light is blue) or, for a query, the answer fact
    assert eps["103"].expected_state["devices"]["lights"]["kitchen"]["color"] == "blue" and not eps["103"].answer_facts
    assert eps["102"].answer_facts and eps["102"].answer_facts[0].startswith("you have")
    assert eps["105"].expected_state is None and eps["105"].answer_facts == []


def test_wav_scp_by_slurp_id_or_recording(slurp_file, tmp_path):
    by_id = tmp_path / "id.scp"
    by_id.write_text("101 /data/101.wav\n103 sox /data/103.flac -t wav - |\n")
    eps = import_slurp(slurp_file, by_id)
    assert {e.id: e.audio for e in eps} == {"slurp-101": "/data/101.wav", "slurp-103": "sox /data/103.flac -t wav - |"}
    by_file = tmp_path / "file.scp"
    by_file.write_text("audio-1.flac /a/1.flac\naudio-2 /a/2.flac\naudio-5.flac /a/5.flac\n")
    eps = import_slurp(slurp_file, by_file)
    assert {e.id: e.audio for e in eps} == {"slurp-101-0": "/a/1.flac", "slurp-101-1": "/a/2.flac",
                                           "slurp-104-0": "/a/5.flac"}
    assert eps[0].meta["recording"] == "audio-1.flac"


def test_bad_rows_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**ROWS[0], "scenario": "alarms"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: intent 'alarms_set'"):
        import_slurp(path)
    path.write_text(json.dumps({k: v for k, v in ROWS[0].items() if k != "action"}) + "\n")
    with pytest.raises(ValueError, match="lacks 'action'"):
        import_slurp(path)


def test_import_command_and_text_data_dir(slurp_file, tmp_path):
    from speechlm.agent.datadir import dialogue_steps
    from speechlm.cli import main

    out = tmp_path / "eps.jsonl"
    assert main(["agent", "import-slurp", "--slurp", str(slurp_file), "--out", str(out)]) == 0
    eps = read_episodes(out)
    assert [e.intent for e in eps] == ["alarm_set", "alarm_query", "iot_hue_lightchange", "weather_query", "play_music"]
    # an imported episode has no reference dialogue: one is made by running its call
    steps = dialogue_steps(eps[2])
    assert [s.target for s in steps] == ["call lights action = change ; color_type = blue ; house_place = kitchen",
                                         "say lights in the kitchen are now blue"]
    assert main(["agent", "datadir", "--episodes", str(out), "--out-dir", str(tmp_path / "d"), "--text-only"]) == 0
    assert not (tmp_path / "d" / "wav.scp").exists()
    assert main(["validate-data", str(tmp_path / "d")]) == 0
