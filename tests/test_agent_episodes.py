"""Agent text formats (calls, results, turns, histories) and the episode JSONL format."""
from __future__ import annotations

import json

import pytest

from speechlm.agent.calls import (Call, CallSyntaxError, canonical_turn, format_call, format_result, format_turn,
                                  parse_call, parse_history, parse_result, parse_turn, render_history)
from speechlm.agent.env import make_env
from speechlm.agent.episodes import Episode, fact_in_answer, read_episodes, success, write_episodes
from speechlm.agent.intents import INTENTS, intent_to_call
from speechlm.agent.tools import ToolError

from test_agent_tools import EXAMPLES


def test_call_text_round_trip_over_all_intents():
    for intent in INTENTS:
        call = intent_to_call(intent, EXAMPLES[intent])
        text = format_call(call)
        assert text == text.lower() and "\n" not in text
        assert parse_call(text) == call
        assert format_call(parse_call(text)) == text  # one canonical text per call
        assert parse_turn(format_turn("call", call)) == ("call", call)


def test_call_format_is_canonical_and_lenient_on_spaces():
    call = Call("alarm", {"time": "Seven  AM", "action": "set"})
    assert format_call(call) == "alarm action = set ; time = seven am"
    assert parse_call("alarm action=set ; time=seven am") == parse_call(format_call(call))  # the older form
    assert parse_call("  ALARM action = set;time=  seven am ") == Call("alarm", {"action": "set", "time": "seven am"})
    assert parse_call("chat") == Call("chat", {})
    assert format_call(Call("chat", {})) == "chat"


def test_calls_decoded_by_a_wordpiece_tokenizer_parse():
    """A BERT-style tokenizer splits names at '_' and decodes them spaced; the call still parses."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "call", "set", "_", "alarm", "date", "=", "tomorrow", ";",
             "time", "seven", "am", "repeat", "every", "day"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    call = Call("set_alarm", {"date": "tomorrow", "time": "seven am", "repeat": "every day"})
    text = format_turn("call", call)
    decoded = tok.decode(tok.encode(text, add_special_tokens=False))
    assert decoded != text and "set _ alarm" in decoded
    assert parse_turn(decoded) == ("call", call)
    assert parse_call("lights _ off house _ place = hall") == Call("lights_off", {"house_place": "hall"})


@pytest.mark.parametrize("text, message, pos", [
    ("", "expected a tool name", 0),
    ("9lights action=on", "expected a tool name", 0),
    ("lights action", "expected name=value", 7),
    ("lights action=on ; house place=hall", "bad argument name", 18),
    ("lights action=on ; action=off", "given twice", 18),
    ("lights action=", "has no value", 14),
    ("lights action=on | off", "'|' inside a value", 17),
    ("weather date=sather date=sday", "'=' inside a value", 24),  # a model's missing ';' (it crashed the loop)
    ("lights(action=on)", "expected a space after the tool name", 6),
])
def test_call_syntax_errors_say_where(text, message, pos):
    with pytest.raises(CallSyntaxError) as err:
        parse_call(text)
    assert message in str(err.value) and err.value.pos == pos


def test_older_call_texts_become_canonical_in_histories():
    old = "call lights action=off ; house_place=kitchen"
    assert canonical_turn(old) == "call lights action = off ; house_place = kitchen"
    assert canonical_turn("say  Lights OFF") == "say lights off"
    hist = render_history([{"role": "user", "text": "kitchen lights off"}, {"role": "assistant", "text": old},
                           {"role": "tool", "text": "ok: lights off in the kitchen"}])
    assert hist == "user kitchen lights off | call lights action = off ; house_place = kitchen | ok: lights off in the kitchen"
    with pytest.raises(CallSyntaxError):
        canonical_turn("lights action=off")


def test_call_values_get_the_pieces_of_the_request_words(tmp_path):
    """The reason for the spaces around '=': a BPE trained on requests and calls gives a slot value
    the same pieces in the call as in the request it is copied from (with ``k=v`` the first word of a
    value is glued to '=' and split into other pieces, so the parser must respell what it copies)."""
    from speechlm.tokenizers.text import train_sentencepiece

    import sentencepiece as spm

    places = ["living room", "kitchen", "bedroom", "bathroom", "garden", "garage"]
    requests, calls = [], []
    for i in range(60):
        place = places[i % len(places)]
        action = ("on", "off", "dim", "up")[i % 4]
        requests.append(f"please turn {action} the lights in the {place}")
        calls.append("call " + format_call(Call("lights", {"action": action, "house_place": place})))
    model = train_sentencepiece(requests + calls, tmp_path, 80)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for place in places:
        want = sp.encode(f"in the {place}", out_type=str)[2:]
        call = sp.encode("call " + format_call(Call("lights", {"action": "up", "house_place": place})), out_type=str)
        assert call[-len(want):] == want, (place, call)
    assert "▁up" in sp.encode("call " + format_call(Call("lights", {"action": "up"})), out_type=str)


def test_values_with_reserved_characters_are_refused():
    for bad in ("a;b", "a=b", "a|b", "  "):
        with pytest.raises(ValueError):
            format_call(Call("lists", {"action": "add", "item": bad}))
    with pytest.raises(ValueError, match="bad tool name"):
        format_call(Call("Lights On", {}))


def test_turns_results_and_history_round_trip():
    assert format_turn("answer", "The alarm is set for SEVEN am.") == "say the alarm is set for seven am."
    assert parse_turn("say the alarm is set") == ("answer", "the alarm is set")
    with pytest.raises(CallSyntaxError, match="starts with 'call ' or 'say '"):
        parse_turn("lights action=on")
    with pytest.raises(CallSyntaxError) as err:
        parse_turn("call lights action")
    assert err.value.pos == len("call lights ")
    env = make_env()
    ok_text = format_result(env.execute("lights action=off ; house_place=kitchen"))
    assert ok_text == "ok: lights off in the kitchen" and parse_result(ok_text) == (True, "lights off in the kitchen")
    err_text = format_result(ToolError("missing argument time for alarm set", "missing", "time"))
    assert parse_result(err_text) == (False, "missing argument time for alarm set")
    turns = [
        {"role": "user", "text": "turn off the kitchen lights and set an alarm"},
        {"role": "assistant", "text": format_turn("call", Call("lights", {"action": "off", "house_place": "kitchen"}))},
        {"role": "tool", "text": ok_text},
        {"role": "assistant", "text": format_turn("call", Call("alarm", {"action": "set"}))},
        {"role": "tool", "text": err_text},
        {"role": "assistant", "text": format_turn("answer", "for what time?")},
    ]
    history = render_history(turns)
    assert history.count(" | ") == len(turns) - 1 and "\n" not in history
    assert parse_history(history) == turns
    assert render_history([]) == "none" and parse_history("none") == []
    with pytest.raises(ValueError, match="role"):
        render_history([{"role": "system", "text": "x"}])


def _episode(i: int, **kw) -> Episode:
    env = make_env()
    call = intent_to_call("alarm_set", [("time", "seven am"), ("date", "friday")])
    result = env.execute(call)
    return Episode(id=f"ep-{i}", turns=[{"text": "wake me at seven on friday", "audio": None}],
                   expected_calls=[call.to_dict()], expected_state={"alarms": env.state["alarms"]},
                   answer_facts=["seven am"], intent="alarm_set", slots=[["time", "seven am"], ["date", "friday"]],
                   meta={"phrasing": 3, "result": result["text"]}, **kw)


def test_episodes_round_trip(tmp_path):
    eps = [_episode(0), _episode(1, kind="recovery", split="test")]
    eps[1].turns.append({"text": "at seven", "audio": "wav/ep-1-1.wav"})
    path = tmp_path / "eps.jsonl"
    write_episodes(path, eps)
    back = read_episodes(path)
    assert back == eps
    assert back[1].audio is None and back[1].turns[1]["audio"] == "wav/ep-1-1.wav"
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(colour="red"), "unknown episode key(s) colour"),
    (lambda d: d.pop("turns"), "missing episode key 'turns'"),
    (lambda d: d.update(kind="weird"), "kind must be one of"),
    (lambda d: d.update(slots=[["time"]]), "slots must be"),
    (lambda d: d.update(expected_calls=[{"name": "alarm", "args": {"time": 7}}]), "expected_calls[0]"),
    (lambda d: d.update(turns=[{"text": "hi", "wav": "x"}]), "turns[0]"),
])
def test_bad_episode_lines_name_file_and_line(tmp_path, mutate, words):
    good = _episode(0).to_dict()
    bad = _episode(1).to_dict()
    mutate(bad)
    path = tmp_path / "eps.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError) as err:
        read_episodes(path)
    assert f"{path}:2" in str(err.value) and words in str(err.value)


def test_bad_json_and_duplicate_ids(tmp_path):
    path = tmp_path / "eps.jsonl"
    path.write_text(json.dumps(_episode(0).to_dict()) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"eps.jsonl:2: not valid JSON"):
        read_episodes(path)
    path.write_text(json.dumps(_episode(0).to_dict()) + "\n" + json.dumps(_episode(0).to_dict()) + "\n")
    with pytest.raises(ValueError, match="duplicate episode id 'ep-0' \\(first on line 1\\)"):
        read_episodes(path)


def test_success_checks_state_and_answer_facts():
    ep = _episode(0)
    env = make_env()
    assert not success(ep, env.state, "done, seven am")  # no alarm was set
    env.execute(ep.expected_calls[0])
    assert success(ep, env.state, "OK, your alarm is set for Seven AM on Friday.")
    assert not success(ep, env.state, "ok, your alarm is set")  # the fact is missing
    assert not fact_in_answer("seven am", "at seventy amps")  # whole words only
    assert fact_in_answer("luigi's", "try Luigi's, an italian restaurant")


def test_slurp_style_values_always_format():
    call = intent_to_call("transport_query", [("place_name", "London"), ("place_name", "paris|nice"),
                                              ("place_name", "a=b;c")])
    assert call.args == {"action": "query", "place_name": "london", "place_name_2": "paris nice", "place_name_3": "a b c"}
    assert parse_call(format_call(call)) == call


def test_episodes_written_with_older_call_texts_train_on_the_canonical_form():
    """An episode file from before the spaced '=' (its reference dialogue holds ``k=v`` calls) gives
    data-dir targets and histories in the form the loop renders and parses today."""
    from speechlm.agent.datadir import dialogue_steps

    ep = _episode(0)
    ep.meta["reference"] = [{"role": "user", "text": "wake me at seven on friday"},
                            {"role": "assistant", "text": "call alarm action=set ; date=friday ; time=seven am"},
                            {"role": "tool", "text": "ok: alarm set for seven am friday"},
                            {"role": "assistant", "text": "say alarm set for seven am friday"}]
    steps = dialogue_steps(ep)
    assert steps[0].target == "call alarm action = set ; date = friday ; time = seven am"
    assert steps[1].history_cascade == "call alarm action = set ; date = friday ; time = seven am | ok: alarm set for seven am friday"
    assert steps[1].target == "say alarm set for seven am friday"
