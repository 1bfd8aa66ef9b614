"""Grounding a call's values in the user's words (speechlm/agent/ground.py) and in the loop."""
import pytest

from speechlm.agent.calls import Call
from speechlm.agent.ground import ground_call, holds, nearest_span


def test_holds_whole_words_and_possessives():
    assert holds("turn on the garage light", "garage")
    assert not holds("turn on the garages light", "garage")
    assert holds("what is mary's email", "mary")
    assert holds("wake me at ten forty am", "ten forty am")
    assert not holds("wake me at ten forty am", "ten forty five am")


def test_nearest_span_reads_like_a_value():
    assert nearest_span("ten forty five am", ["wake me at ten forty am please"]) == ("ten forty am", pytest.approx(5 / 17))
    assert nearest_span("x", []) is None
    # no function word at either end: `to my` is closer to `today` but is no value
    assert nearest_span("today", ["add the next one to my calendar"])[0] == "calendar"
    assert ground_call(Call("calendar", {"action": "set", "date": "today"}),
                       ["add the next one to my calendar"]) == (Call("calendar", {"action": "set", "date": "today"}), {})
    # a leading `the` aside: `the work` is `work`, not `the time`
    assert nearest_span("the work", ["check the traffic to work and what is the time"]) == ("work", 0.0)
    # heard words may hold a call's reserved characters (an e2e monologue is free text): never in a value
    call = Call("calendar", {"action": "set", "event_name": "time eight am"})
    out, _ = ground_call(call, ["set it for time = eight am"])
    assert out.args["event_name"] == "eight am" and str(out)  # the call still formats


def test_ground_call_replaces_a_value_not_said_by_the_closest_span():
    call = Call("lights", {"action": "on", "house_place": "garden"})
    out, changed = ground_call(call, ["switch the garage light on"])
    assert out.args == {"action": "on", "house_place": "garage"}
    assert changed == {"house_place": ["garden", "garage"]}
    # off: the call as decoded
    assert ground_call(call, ["switch the garage light on"], max_distance=0) == (call, {})


def test_ground_call_keeps_said_seen_far_and_enum_values():
    said = ["when is my dentist appointment and set an alarm half an hour before it"]
    seen = ["dentist appointment at ten am on wednesday"]
    # verbatim in a tool's result (a context transition) or computed from it (nothing close): kept
    call = Call("alarm", {"action": "set", "time": "nine thirty am", "date": "wednesday"})
    assert ground_call(call, said, seen) == (call, {})
    # a time relative to another: the request's offset, the calendar's time (each said or seen): kept
    rel = Call("alarm", {"action": "set", "time": "half an hour before ten am", "date": "wednesday"})
    assert ground_call(rel, said, seen) == (rel, {})
    far = Call("alarm", {"action": "set", "time": "half an hour before noon"})  # noon: nobody said it
    assert ground_call(far, said, seen)[0] != far
    # a synonym with no close span: kept
    kitchen = Call("lights", {"action": "on", "house_place": "kitchen"})
    assert ground_call(kitchen, ["flick the cooking area light on"]) == (kitchen, {})
    # enum values are the tool's business (its schema check), never replaced
    up = Call("volume", {"action": "up"})
    assert ground_call(up, ["make it louder"]) == (up, {})
