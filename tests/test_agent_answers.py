"""The answers an answer turn may give (speechlm.agent.answers): the results of the calls since
the last answer (any of them, in order), an error told, a question back or ``done``; and the
loop gives an answer in the option's own words."""
from __future__ import annotations

import speechlm
from speechlm.agent.answers import MAX_SUBSETS, answer_options, ask_backs, canonical_answer
from speechlm.agent.episodes import Episode
from speechlm.agent.loop import AgentLoop, LoopConfig
from test_agent_loop import make_model_dir


def turns(*texts: str) -> list[dict]:
    role = {"user": "user", "call": "assistant", "say": "assistant", "ok:": "tool", "error:": "tool"}
    return [{"role": role[t.split()[0]], "text": t} for t in texts]


def test_options_are_the_results_since_the_last_answer_in_order():
    hist = turns("user what's on and lights off", "call news", "ok: sports news: city win",
                 "call lights action = off ; house_place = den", "error: no light in the den",
                 "call lights action = off ; house_place = kitchen", "ok: lights off in the kitchen")
    opts = answer_options(hist, ["which room"])
    assert opts[0] == "sports news: city win and lights off in the kitchen"  # the reference answer first
    assert set(opts) == {"sports news: city win and lights off in the kitchen", "sports news: city win",
                         "lights off in the kitchen", "sorry, no light in the den", "which room", "done"}
    assert "lights off in the kitchen and sports news: city win" not in opts
    later = answer_options(hist + turns("say sports news: city win", "user and the weather", "call weather",
                                       "ok: sunny"))
    assert later == ["sunny", "done"]  # what the tools said before the last answer is not said again
    assert answer_options(turns("user hello")) == ["done"]


def test_many_results_give_each_alone_or_all():
    hist = turns("user do it all", *[t for i in range(MAX_SUBSETS + 1) for t in (f"call news", f"ok: result {i}")])
    opts = answer_options(hist)
    assert len(opts) == MAX_SUBSETS + 3 and opts[0].count(" and ") == MAX_SUBSETS


def test_ask_backs_ask_for_every_argument():
    qs = ask_backs()
    assert {"which room", "what time should it be", "which day do you mean"} <= set(qs)
    assert "which music genre do you mean" in qs  # an argument without its own question


def test_canonical_answer_reads_a_tokenizer_spacing():
    opts = ["mary's email is mary at example dot com", "done"]
    assert canonical_answer("mary ' s email is mary at example dot com", opts) == opts[0]
    assert canonical_answer("Done", opts) == "done"
    assert canonical_answer("mary's phone", opts) is None


def test_the_loop_answers_in_the_options_words(tmp_path):
    pipe = speechlm.load(make_model_dir(tmp_path / "model"))
    for valid in (True, False):
        loop = AgentLoop(pipe, LoopConfig(mode="text", valid_answers=valid))
        run = loop.start(Episode(id="a1", turns=[{"text": "mary's email"}]))
        loop.prepare([run])
        assert loop.apply(run, "call contact action = query ; person = mary", retry=False) == "call"
        assert run.calls[-1]["ok"] and run.calls[-1]["result"].startswith("ok: mary's email is")
        said = run.calls[-1]["result"][len("ok: "):]
        spaced = said.replace("'", " ' ")  # as a WordPiece tokenizer gives it back
        loop.apply(run, "say " + spaced, retry=False)
        assert run.answer == (said if valid else " ".join(spaced.split())) and run.ended == "answer"
