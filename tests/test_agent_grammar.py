"""Decoding constrained to valid calls (speechlm.agent.grammar) with a real tiny model's tokenizer:
the rule walks valid turns and refuses an unknown tool, an unknown or repeated argument and a
value outside an enum; an untrained model sampled under it writes only turns the tools accept,
while sampled free it does not."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import speechlm
from speechlm.agent.episodes import Episode
from speechlm.agent.ground import CLOSED_ARGS
from speechlm.agent.loop import AgentLoop, LoopConfig, classify_turn
from speechlm.agent.tools import get_tool, validate_args
from test_agent_loop import make_model_dir


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> AgentLoop:
    return AgentLoop(speechlm.load(make_model_dir(tmp_path_factory.mktemp("grammar") / "model")),
                     LoopConfig(mode="text", copy_values=False))


def ids(loop: AgentLoop, text: str) -> list[int]:
    """``text``'s local ids in the model's text tokenizer."""
    return np.asarray(loop.pipe.tokenizers[loop.decoder.tokenizer].encode(text)).reshape(-1).tolist() if text else []


def refused_at(follower, tokens: list[int]) -> int:
    """The index of the first token the rule does not allow (-1: all allowed)."""
    for i, t in enumerate(tokens):
        allowed = follower.allowed()
        if allowed is not None and int(t) not in allowed:
            return i
        follower.observe(int(t))
    return -1


def test_the_rule_walks_valid_turns_and_refuses_invalid_ones(loop):
    d = loop.decoder
    for text in ("call lights action = dim ; house_place = kitchen", "call lights house_place = the den",
                 "call chat action = joke", "say it is done", "call weather"):
        f = d.call_follower(False)
        assert refused_at(f, ids(loop, text)) == -1, text
        assert f.may_end(), text
    for text, where in (("call lightz action = on", "call light"), ("call lights colour = red", "call lights colo"),
                        ("call lights action = down", "call lights action = d"),
                        ("call lights action = on ; action = off", "call lights action = on ; "),
                        ("hello there", "")):
        f = d.call_follower(False)
        assert refused_at(f, ids(loop, text)) == len(ids(loop, where)), text
    # copied values: a span of what was said or returned, at least one token; no turn ends mid-name
    f = d.call_follower(False, ["turn on the kitchen light"])
    assert refused_at(f, ids(loop, "call lights house_pl")) == -1 and not f.may_end()
    refused_at(f, ids(loop, "ace ="))
    assert not f.may_end() and not set(f.allowed()) & d.marks(";")
    assert refused_at(f, ids(loop, " kitchen")) == -1 and f.may_end()
    for value, where in (("call lights house_place = garden", "call lights house_place = "),  # a word nobody said
                         ("call lights house_place = kitchen the", "call lights house_place = kitchen "),  # not in this order
                         ("call lights house_place = six", "call lights house_place = ")):  # a name is no number
        assert refused_at(d.call_follower(False, ["the kitchen"]), ids(loop, value)) == len(ids(loop, where)), value
    f = d.call_follower(False, ["the kitchen"])  # the span ends where its text does (a char tokenizer: " ;" next)
    assert refused_at(f, ids(loop, "call lights house_place = the kitchen")) == -1
    assert set(f.allowed()) == d.marks(";") | set(d.grammar(False).sep_lead) and f.may_end()
    # a time is composed: the request's offset, the calendar's time and closed words
    texts = ["set an alarm half an hour before it", "ok: dinner friday at seven pm"]
    for call in ("call alarm time = half an hour before seven pm ; date = friday", "call alarm time = nine oh five pm"):
        assert refused_at(d.call_follower(False, texts), ids(loop, call)) == -1, call
    f = d.grammar(False).follower([ids(loop, "hi")], d.closed_ids(), max_value=3)  # such a value has a length bound
    assert refused_at(f, ids(loop, "call alarm time = nine")) == len(ids(loop, "call alarm time =")) + 3
    assert set(f.allowed()) == d.marks(";")
    for turn in ("call lights action = on", "say ok"):  # an inner monologue: words up to '|', then a turn
        f = d.call_follower(True)
        refused_at(f, ids(loop, "user zzz qq"))
        assert not f.may_end()
        assert refused_at(f, ids(loop, "user zzz qq | " + turn)[len(ids(loop, "user zzz qq")):]) == -1 and f.may_end()
    assert refused_at(d.call_follower(False), ids(loop, "sayit")) == 3


def test_a_slot_the_user_named_takes_one_of_those_names(loop):
    """typed_values: where the request names a place and a kind of business the home knows, those
    slots take those names (not another span of the request); other slots stay spans of it."""
    request = "where can i find a pub in london"
    texts, typed = [request], {"business_type": ["pub"], "place_name": ["london"]}
    d = loop.decoder
    head = "call recommend action = locations ; "
    for call in (head + "business_type = pub ; place_name = london", head + "place_name = london"):
        f = d.call_follower(False, texts, typed=typed)
        assert refused_at(f, ids(loop, call)) == -1 and f.may_end(), call
    for call, where in ((head + "business_type = london", head + "business_type = "),
                        (head + "place_name = a pub", head + "place_name = ")):
        assert refused_at(d.call_follower(False, texts, typed=typed), ids(loop, call)) == len(ids(loop, where)), call
        assert refused_at(d.call_follower(False, texts), ids(loop, call)) == -1, call  # untyped: any span
    # the loop finds the names in what the user said (the episode's catalogue) and hands them on
    typed_loop = AgentLoop(loop.pipe, LoopConfig(mode="text"))
    run = typed_loop.start(Episode(id="t1", turns=[{"text": request}]))
    typed_loop.prepare([run])
    assert typed_loop.named(run) == typed
    (f,) = typed_loop.followers([run])
    assert set(f.span_sets) == {None, "business_type", "place_name"}
    (f,) = AgentLoop(loop.pipe, LoopConfig(mode="text", typed_values=False)).followers([run])
    assert set(f.span_sets) == {None}


def test_a_monologue_heard_by_the_asr_task_is_forced(loop):
    d = loop.decoder
    heard = d.grammar(True).heard_tokens("turn on the light")
    assert heard == ids(loop, "user turn on the light |")
    f = d.call_follower(True, heard=heard)
    for t in heard:  # those tokens only, one after the other, and no end before a turn
        assert f.allowed() == [t] and not f.may_end()
        f.observe(t)
    turn = ids(loop, "user turn on the light | call lights action = on")[len(heard):]
    assert refused_at(f, turn) == -1 and f.may_end()
    assert refused_at(d.call_follower(True, heard=heard), ids(loop, "user turn off")) == len(ids(loop, "user turn o"))


@pytest.mark.parametrize("copied", [False, True])
def test_an_untrained_model_writes_only_valid_turns_under_the_rule(loop, copied):
    request = "turn on the kitchen lights"
    loop = AgentLoop(loop.pipe, LoopConfig(mode="text", copy_values=copied))
    d = loop.decoder
    run = loop.start(Episode(id="g1", turns=[{"text": request}]))
    loop.prepare([run])
    _, prompts = loop.encode_all([run])
    cfg = copy.copy(d.config)
    cfg.search, cfg.nbest, cfg.temperature, cfg.top_k, cfg.seed, cfg.max_len = "sample", 8, 1.0, 0, 3, 200
    free = d(prompts, ["g1"], cfg.validate())[0]
    (rule,) = loop.followers([run])
    held = d(prompts, ["g1"], cfg, [rule])[0]
    assert all(classify_turn(t)[0] == "invalid" for t in free), free
    kinds = [classify_turn(t) for t in held]
    assert all(k != "invalid" for k, _, _ in kinds), held
    calls = [c for k, c, _ in kinds if k == "call"]
    assert calls, held
    for c in calls:  # enums too: the schema accepts every call but for a missing argument
        try:
            validate_args(get_tool(c.name), c.args)
        except Exception as e:  # noqa: BLE001
            assert "missing argument" in str(e), (c, e)
    if copied:  # values: spans of the request; a time or a date: its tokens and closed words, no longer than it
        assert rule.max_value == len(ids(loop, " " + request))
        values = [(k, v) for c in calls for k, v in c.args.items() if k != "action"]
        assert values and all(v in request if k not in CLOSED_ARGS else len(v) <= len(request) + 1
                              for k, v in values), values


def test_valid_calls_can_be_turned_off(loop):
    pipe = loop.pipe
    run = loop.start(Episode(id="g2", turns=[{"text": "zzz"}]))
    loop.prepare([run])
    assert AgentLoop(pipe, LoopConfig(mode="text", valid_calls=False, copy_values=False)).followers([run]) is None
    (f,) = AgentLoop(pipe, LoopConfig(mode="e2e")).followers([run])
    assert f.spans is None and f.bag is None  # e2e: the grammar, values not copied


def test_the_run_command_passes_the_rule_and_the_whisper_prompt_to_every_job():
    import argparse

    from speechlm.agent.commands.run import _child_command, _loop_config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    on = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o"])
    off = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--no-valid-calls", "--nj", "2"])
    assert _loop_config(on).valid_calls and not _loop_config(off).valid_calls
    assert "--no-valid-calls" in _child_command(off, 1, 1) and "--no-valid-calls" not in _child_command(on, 1, 1)
    untyped = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--no-typed-values"])
    assert _loop_config(on).typed_values and not _loop_config(untyped).typed_values
    assert "--no-typed-values" in _child_command(untyped, 1, 1) and "--no-typed-values" not in _child_command(on, 1, 1)
    bare = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--whisper-prompt", ""])
    assert _loop_config(bare).whisper_prompt == "" and _loop_config(on).whisper_prompt
    cmd = _child_command(bare, 1, 1)
    assert cmd[cmd.index("--whisper-prompt") + 1] == ""  # every job hears without one


def test_an_answer_is_one_of_the_options_and_ends_only_at_one(loop):
    d = loop.decoder
    opts = ["lights on in the kitchen", "lights on in the kitchen and it is sunny", "done"]
    for text in opts:
        f = d.call_follower(False, answers=opts)
        assert refused_at(f, ids(loop, "say " + text)) == -1 and f.may_end(), text
    f = d.call_follower(False, answers=opts)
    assert refused_at(f, ids(loop, "say lights on in the kitchen and it is sunny")) == -1 and f.allowed() == []
    f = d.call_follower(False, answers=opts)
    assert refused_at(f, ids(loop, "say lights on in the garden")) == len(ids(loop, "say lights on in the "))
    f = d.call_follower(False, answers=opts)
    refused_at(f, ids(loop, "say lights on in the kitch"))
    assert not f.may_end()  # no answer ends mid-option
    # calls are as before; without options an answer is free words
    assert refused_at(d.call_follower(False, answers=opts), ids(loop, "call lights action = on")) == -1
    assert refused_at(d.call_follower(False), ids(loop, "say lights on in the garden")) == -1


def test_the_run_command_passes_free_answers_to_every_job():
    import argparse

    from speechlm.agent.commands.run import _child_command, _loop_config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    on = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--nj", "2"])
    free = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--nj", "2", "--free-answers"])
    assert _loop_config(on).valid_answers and not _loop_config(free).valid_answers
    assert "--free-answers" in _child_command(free, 1, 1) and "--free-answers" not in _child_command(on, 1, 1)
    mono = p.parse_args(["--model-dir", "m", "--episodes", "e", "--out-dir", "o", "--nj", "2", "--hear", "monologue"])
    assert _loop_config(on).hear == "auto" and _loop_config(mono).hear == "monologue"
    cmd = _child_command(mono, 1, 1)
    assert cmd[cmd.index("--hear") + 1] == "monologue"  # every job hears the same way
