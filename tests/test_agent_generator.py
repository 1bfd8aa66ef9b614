"""The episode generator: phrasings (two styles, disjoint; pooled with templates held out),
determinism, kinds, held-out values, and episodes whose reference dialogue replays to their
expected state and answer facts."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from speechlm.agent.calls import parse_turn
from speechlm.agent.env import make_env
from speechlm.agent.episodes import read_episodes, success, write_episodes
from speechlm.agent.generator import DEFAULT_MIX, generate_episodes
from speechlm.agent.requests import (HELD_OUT, PHRASING_DIR, SPLITS, TRAINING_ONLY, TRANSITIONS, heldout,
                                     load_phrasings, load_values, split_phrasings)
from speechlm.agent.intents import INTENTS, call_to_intent
from speechlm.agent.calls import Call


@pytest.fixture(scope="module")
def train_eps():
    return generate_episodes(150, "train", seed=7)


@pytest.fixture(scope="module")
def test_eps():
    return generate_episodes(150, "test", seed=7)


def test_phrasings_cover_every_intent_in_two_disjoint_styles():
    train, test = load_phrasings("train"), load_phrasings("test")
    for ph in (train, test):
        assert set(ph.intents) == set(INTENTS)
        assert ph.underspecified and ph.transitions and ph.corrections and ph.answers
    assert sum(map(len, train.intents.values())) >= 6 * len(INTENTS)
    # no test line (template, wrapper, connector, answer) is a training line
    assert not set(train.all_lines()) & set(test.all_lines())
    # the test style is shorter: fewer words per template on average
    words = lambda ph: sum(len(t.split()) for ts in ph.intents.values() for t in ts) / sum(map(len, ph.intents.values()))
    assert words(test) < 0.8 * words(train)
    values = load_values()
    for slot, v in values.items():
        assert not set(v["train"]) & set(v["test"]), slot


def test_load_phrasings_names_a_bad_slot(tmp_path):
    text = (load_phrasings("train").path and open(load_phrasings("train").path).read())
    bad = text.replace("set an alarm for {time}\n", "set an alarm for {colour}\n", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(ValueError, match=r"alarm_set.*\{colour\} is not an argument of tool alarm"):
        load_phrasings(str(path))
    path.write_text(text.replace("set an alarm for {time}\n", "set an alarm for 7\n", 1))
    with pytest.raises(ValueError, match="numbers spelled out"):
        load_phrasings(str(path))
    # a transition's template says exactly the slots the generator fills
    path.write_text(text.replace("add the next one to my calendar", "add the next one to my {list_name}", 1))
    with pytest.raises(ValueError, match=r"transport_calendar: .*must say \{place_name\} and \{transport_type\} "
                                         r"once each, and no other slot"):
        load_phrasings(str(path))


def test_generation_is_deterministic_and_covers_kinds(train_eps):
    again = generate_episodes(150, "train", seed=7)
    assert [e.to_dict() for e in again] == [e.to_dict() for e in train_eps]
    other = generate_episodes(150, "train", seed=8)
    assert [e.text for e in other] != [e.text for e in train_eps]
    kinds = Counter(e.kind for e in train_eps)
    assert kinds == {k: round(150 * v) for k, v in DEFAULT_MIX.items()}
    # atomic episodes cycle through the intents: 90 atomic episodes cover all 59
    assert {e.intent for e in train_eps if e.kind == "atomic"} == set(INTENTS)
    sub = Counter(e.meta.get("recovery") or e.meta.get("composition") for e in train_eps if e.kind != "atomic")
    assert set(sub) == {"ask_back", "correction", "inform", "concatenation", "transition"}


def test_text_is_lower_case_words(train_eps, test_eps):
    for e in train_eps + test_eps:
        for t in e.turns:
            assert t["text"] == t["text"].lower() and not re.search(r"[\d{},.?!]", t["text"]), t["text"]
    # the punctuated form (pauses for the synthesizers) is kept beside the transcript
    spoken = [e for e in train_eps + test_eps if "spoken" in e.meta]
    assert spoken and all(len(e.meta["spoken"]) == len(e.turns) for e in spoken)
    assert any("," in x for e in spoken for x in e.meta["spoken"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_reference_dialogue_replays_to_the_expected_state_and_answer(split, train_eps, test_eps):
    """Running each episode's reference calls on its initial state gives its expected state, its
    expected calls (the successful ones) and an answer holding every answer fact; a wrong
    answer fails an episode with facts."""
    eps = train_eps if split == "train" else test_eps
    for ep in eps:
        env = make_env("home", ep.initial_state)
        answer, calls = None, []
        ref = ep.meta["reference"]
        assert ref[0]["role"] == "user" and ref[-1]["role"] == "assistant"
        assert [t["text"] for t in ref if t["role"] == "user"] == [t["text"] for t in ep.turns]
        for i, turn in enumerate(ref):
            if turn["role"] != "assistant":
                continue
            kind, payload = parse_turn(turn["text"])
            if kind == "call":
                ok, result = env.respond(payload)
                assert ref[i + 1] == {"role": "tool", "text": result}
                if ok:
                    calls.append(payload.to_dict())
            else:
                answer = payload
        assert answer is not None
        assert success(ep, env.state, answer), ep.id
        if ep.meta.get("recovery") != "inform":
            assert calls == ep.expected_calls
        if ep.answer_facts:
            assert not success(ep, env.state, "i do not know"), ep.id
        # the intent and slots are those of the first expected call
        if ep.kind == "atomic" or ep.meta.get("recovery") in ("ask_back", "correction"):
            intent, slots = call_to_intent(Call.from_dict(ep.expected_calls[0]))
            assert intent == ep.intent
            assert sorted(map(tuple, ep.slots)) == sorted(slots)


def test_recovery_episodes(train_eps):
    asks = [e for e in train_eps if e.meta.get("recovery") == "ask_back"]
    assert asks
    for e in asks:
        assert len(e.turns) == 2
        roles = [t["role"] for t in e.meta["reference"]]
        assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
        assert e.meta["reference"][2]["text"].startswith("error: missing argument")
        assert e.meta["reference"][3]["text"].startswith("say ")
    informs = [e for e in train_eps if e.meta.get("recovery") == "inform"]
    for e in informs:
        assert e.meta["reference"][-1]["text"].startswith("say sorry,")
        assert e.answer_facts and e.meta["reference"][-2]["text"].startswith("error:")
    for e in (x for x in train_eps if x.meta.get("recovery") == "correction"):
        said, meant = e.meta["said"], e.meta["meant"]
        assert said in e.turns[0]["text"] and [meant] == [v for _, v in e.slots if v in (said, meant)]


def test_transitions_use_the_first_result(train_eps):
    trans = [e for e in train_eps if e.meta.get("composition") == "transition"]
    assert trans
    for e in trans:
        assert len(e.expected_calls) == 2
        first_result = e.meta["reference"][2]["text"]
        second = e.expected_calls[1]["args"]
        # a value of the second call (a date, or the event's time) comes from the first result
        assert any(v in first_result for k, v in second.items() if k in ("date", "time")) or \
            e.meta["transition"] == "calendar_alarm"


def _templates(ph):
    return {t for ts in ph.intents.values() for t in ts}


def test_pooled_split_holds_out_a_quarter_of_both_authors_templates():
    train, test = split_phrasings("train"), split_phrasings("test")
    author_a, author_b = _templates(load_phrasings("train")), _templates(load_phrasings("test"))
    assert set(train.intents) == set(test.intents) == set(INTENTS)
    assert not set(train.all_lines()) & set(test.all_lines())
    said_train, said_test = ({(slot, w) for slot, table in ph.corrections.items() for w in table}
                             for ph in (train, test))
    assert said_train and said_test and not said_train & said_test
    others = set().union(*(_templates(load_phrasings(str(PHRASING_DIR / n))) for n in TRAINING_ONLY))
    assert _templates(train) | _templates(test) == author_a | author_b | others
    assert 0.2 < len(_templates(test)) / len(author_a | author_b) < 0.3
    assert _templates(test) & author_a and _templates(test) & author_b
    for intent in INTENTS:  # every intent keeps both: something to learn, something held out
        assert train.intents[intent] and test.intents[intent], intent
    assert train.casual is not None and test.casual is None
    assert split_phrasings("test", "author") is load_phrasings("test")


@pytest.mark.parametrize("held_out", ["templates", "author"])
def test_training_only_authors_add_templates_to_training_and_never_to_test(held_out):
    train, test = split_phrasings("train", held_out), split_phrasings("test", held_out)
    authors = set(load_phrasings("train").all_lines()) | set(load_phrasings("test").all_lines())
    said_by_a_or_b = {w for n in SPLITS for table in load_phrasings(n).corrections.values() for w in table}
    for name in TRAINING_ONLY:
        extra = load_phrasings(str(PHRASING_DIR / name))
        assert set(extra.intents) == set(INTENTS)
        assert not set(extra.all_lines()) & authors  # written apart: no line of another author's
        authors |= set(extra.all_lines())
        assert _templates(extra) <= _templates(train) and not _templates(extra) & _templates(test)
        assert set(extra.wake_words) <= set(train.wake_words)
        for intent, ts in extra.underspecified.items():
            assert set(ts) <= set(train.underspecified[intent])
        assert set(extra.transitions) == set(TRANSITIONS)  # more ways to ask for two dependent calls
        for kind, ts in extra.transitions.items():
            assert set(ts) <= set(train.transitions[kind]) and not set(ts) & set(test.transitions.get(kind, []))
        # more words the tools do not know, none of them author A's or B's (so no test one)
        said = {w for table in extra.corrections.values() for w in table}
        assert said and not said & said_by_a_or_b
        for slot, table in extra.corrections.items():
            assert table.items() <= train.corrections[slot].items()
            assert not set(table) & set(test.corrections.get(slot, {}))
    assert not set(train.all_lines()) & set(test.all_lines())
    with pytest.raises(ValueError, match="held_out must be one of"):
        split_phrasings("test", "voices")


@pytest.mark.parametrize("held_out", ["templates", "author"])
def test_atomic_test_requests_use_held_out_templates(held_out):
    train_t = _templates(split_phrasings("train", held_out))
    test_t = _templates(split_phrasings("test", held_out))
    eps = generate_episodes(60, "test", seed=3, mix={"atomic": 1}, held_out=held_out)
    assert all(e.meta["template"] in test_t and e.meta["template"] not in train_t for e in eps)


def test_test_split_uses_held_out_phrasings_and_values(train_eps, test_eps):
    train_templates, test_templates = _templates(split_phrasings("train")), _templates(split_phrasings("test"))
    for e in test_eps:
        if "template" in e.meta and e.kind == "atomic":
            assert e.meta["template"] in test_templates and e.meta["template"] not in train_templates
    assert not {t["text"] for e in test_eps for t in e.turns} & {t["text"] for e in train_eps for t in e.turns}
    train_values = {v for e in train_eps for _, v in e.slots}
    test_values = {v for e in test_eps for _, v in e.slots}
    # held-out values: from values.yaml's test lists, or closed-domain values the hash holds out
    held = set().union(*(set(v["test"]) for v in load_values().values()))
    assert {v for v in test_values if v in held or heldout(v)} - train_values
    assert not {v for v in train_values if v in held}
    closed = {"house_place", "device_type", "color_type", "definition_word", "currency_name", "radio_name",
              "news_topic", "movie_type", "transport_type", "artist_name", "song_name", "game_name", "business_name"}
    train_more = generate_episodes(400, "train", seed=9)
    leaks = {(s, v) for e in train_eps + train_more for s, v in e.slots if s in closed and heldout(v)}
    leaks |= {(k, v) for e in train_eps + train_more for c in e.expected_calls for k, v in c["args"].items()
              if k in closed and heldout(v)}
    assert not leaks
    # nor does a correction lead training to one (author B's `lime` -> green)
    for held_out in HELD_OUT:
        meant = {m for table in split_phrasings("train", held_out).corrections.values() for m in table.values()}
        assert meant and not {m for m in meant if heldout(m)}


def test_episodes_round_trip(tmp_path, train_eps):
    path = tmp_path / "eps.jsonl"
    write_episodes(path, train_eps[:20])
    back = read_episodes(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in train_eps[:20]]
    assert json.loads(path.read_text().splitlines()[0])["meta"]["reference"]


def test_generate_command(tmp_path):
    from speechlm.cli import main

    out = tmp_path / "e.jsonl"
    assert main(["agent", "generate", "--out", str(out), "--n", "12", "--split", "test", "--seed", "2",
                 "--mix", "atomic=1"]) == 0
    eps = read_episodes(out)
    assert len(eps) == 12 and {e.kind for e in eps} == {"atomic"} and {e.split for e in eps} == {"test"}
    assert main(["agent", "generate", "--out", str(out), "--n", "3", "--mix", "atomic"]) == 1  # bad --mix


@pytest.mark.parametrize("split, phrasings", [("train", None), ("test", None)]
                         + [("train", str(PHRASING_DIR / name)) for name in TRAINING_ONLY])
def test_every_template_can_make_an_episode(split, phrasings):
    from speechlm.agent.generator import template_yield

    never = [k for k, v in template_yield(split, tries=4, seed=0, phrasings=phrasings).items() if v == 0]
    assert not never, f"templates whose values the tools never accept: {never}"


@pytest.mark.parametrize("split", ["train", "test"])
def test_corrections_fail_then_succeed(split):
    """Every correction word is refused by its tool with an error about its slot, and the
    meant value is accepted (else the generator would draw it in vain)."""
    from speechlm.agent.intents import intent_to_call
    from speechlm.agent.tools import ToolError

    use = {"house_place": ("iot_hue_lighton", {}), "device_type": ("iot_wemo_on", {}),
           "color_type": ("iot_hue_lightchange", {"house_place": "kitchen"})}
    for slot, table in load_phrasings(split).corrections.items():
        intent, extra = use[slot]
        for said, meant in table.items():
            env = make_env("home")
            with pytest.raises(ToolError) as err:
                env.execute(intent_to_call(intent, [(slot, said), *extra.items()]))
            assert err.value.arg == slot, (said, str(err.value))
            env.execute(intent_to_call(intent, [(slot, meant), *extra.items()]))


def test_heldout_rate():
    values = load_values()
    held = {v for k in ("event_name", "person", "item", "message", "coffee_type") for v in values[k]["test"]}
    count = lambda eps: sum(v in held for e in eps for _, v in e.slots)
    none = generate_episodes(120, "test", seed=3, mix={"atomic": 1}, heldout_rate=0.0)
    every = generate_episodes(120, "test", seed=3, mix={"atomic": 1}, heldout_rate=1.0)
    assert count(none) == 0 and count(every) > 5
    with pytest.raises(ValueError, match="heldout_rate"):
        generate_episodes(3, "test", heldout_rate=2)


def test_casual_variants_keep_every_slot_and_only_the_training_split_has_them():
    import random

    from speechlm.agent.requests import PLACEHOLDER, Casual

    casual = load_phrasings("train").casual
    assert casual is not None and 0 < casual.rate < 1 and load_phrasings("test").casual is None
    always = Casual(1.0, casual.fillers, casual.drop_words, casual.front_words)
    template = "could you please turn off the lights in the {house_place} at {time}"
    rng = random.Random(0)
    said = [always.apply(rng, template) for _ in range(200)]
    for s in said:
        assert sorted(PLACEHOLDER.findall(s)) == ["house_place", "time"], s
        assert {"turn", "off", "lights"} <= set(s.split()), s  # words that carry the intent stay
    assert not {"on", "off", "like", "not", "up", "down"} & casual.drop_words
    assert any(s.startswith("{") for s in said)  # a slot said first
    assert any(len(s.split()) <= 6 for s in said)  # elliptic: function words dropped
    assert any(set(s.split()) & set(casual.fillers) for s in said)
    known = set(template.split()) | {w for f in casual.fillers for w in f.split()}
    assert any(set(s.split()) - known for s in said)  # a made-up word
    order = [w for w in template.split() if "{" not in w]
    assert any([w for w in s.split() if w in order] not in (order, [w for w in order if w in s.split()]) for s in said)  # a swap
    assert len(set(said)) > 50
    # rate 0 leaves the template and the random stream alone (the test split stays the same)
    r1, r2 = random.Random(3), random.Random(3)
    assert Casual(0.0, [], frozenset(), frozenset()).apply(r1, template) == template and r1.random() == r2.random()
    # of the requests from authors A's and B's templates (author C often puts a slot first itself)
    ab = _templates(load_phrasings("train")) | _templates(load_phrasings("test"))
    eps = [e for e in generate_episodes(800, "train", seed=11, mix={"atomic": 1})
           if e.meta["template"] in ab and not e.meta["template"].startswith("{")]
    casual_share = sum(e.turns[0]["text"] != e.meta["template"]
                       and e.turns[0]["text"].split()[0] in {v for _, v in e.slots} | set(casual.fillers)
                       for e in eps) / len(eps)
    assert len(eps) > 150 and casual_share > 0.08
