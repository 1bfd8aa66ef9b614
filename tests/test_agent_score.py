"""SLU-F1 on hand-made cases with known answers, and the agent scorer on a run dir written by hand."""
from __future__ import annotations

import json
import shutil

import pytest

from speechlm.agent.slu_f1 import SLUF1, char_distance, levenshtein, slu_f1, word_distance


def E(t: str, f: str) -> dict:
    return {"type": t, "filler": f}


def test_exact_match_is_one():
    gold = [E("time", "seven am"), E("date", "tomorrow")]
    s = slu_f1([(gold, list(reversed(gold)))])
    assert s == pytest.approx({"span_f1": 1.0, "word_f1": 1.0, "char_f1": 1.0, "slu_f1": 1.0,
                               "slu_precision": 1.0, "slu_recall": 1.0})


def test_one_substituted_word():
    # word: WER 1/2 -> tp 1, fp = fn = 0.5 -> F1 2/3; char: "seven"->"eight" is 5 edits of 8 chars
    # -> fp = fn = 0.625 -> F1 1/1.625; SLU-F1 sums both: tp 2, fp = fn = 1.125 -> 2/3.125
    s = slu_f1([([E("time", "seven am")], [E("time", "eight am")])])
    assert s["span_f1"] == 0.0
    assert s["word_f1"] == pytest.approx(2 / 3)
    assert s["char_f1"] == pytest.approx(1 / 1.625)
    assert s["slu_f1"] == pytest.approx(2 / 3.125)


def test_a_missing_and_an_extra_slot():
    # date matches exactly; time is missed (fn 1), place_name is extra (fp 1): P = R = F1 = 1/2
    gold = [E("date", "tomorrow"), E("time", "seven am")]
    pred = [E("date", "tomorrow"), E("place_name", "kitchen")]
    s = slu_f1([(gold, pred)])
    assert s["slu_f1"] == pytest.approx(0.5)
    assert s["word_f1"] == pytest.approx(0.5) and s["char_f1"] == pytest.approx(0.5)
    # nothing predicted: recall 0 -> F1 0; nothing gold and nothing predicted adds no counts
    assert slu_f1([(gold, [])])["slu_f1"] == 0.0
    assert slu_f1([(gold, gold), ([], [])])["slu_f1"] == 1.0


def test_same_type_twice_matches_the_nearest_gold_filler():
    gold = [E("person", "anna"), E("person", "bob smith")]
    pred = [E("person", "bob smyth"), E("person", "anna")]
    m = SLUF1()
    m.add(gold, pred)
    word = m.by_distance["word"]
    # "bob smyth" pairs with "bob smith" (WER 1/2), not with "anna" (WER 2): fp = fn = 0.5
    assert word.tp["person"] == 2 and word.fp["person"] == pytest.approx(0.5)
    assert word.fn["person"] == pytest.approx(0.5)


def test_micro_sums_counts_over_utterances_and_macro_averages_types():
    pairs = [([E("date", "today")], [E("date", "today")]),
             ([E("time", "noon")], [])]
    assert slu_f1(pairs)["slu_f1"] == pytest.approx(2 / 3)  # tp 2 (x2 distances), fn 2 -> P 1, R 1/2
    assert slu_f1(pairs, average="macro")["slu_f1"] == pytest.approx(0.5)  # date 1.0, time 0.0


def test_distances_match_jiwer_and_the_normalised_levenshtein():
    import jiwer

    for gold, pred in [("set an alarm", "set the alarm for"), ("kitchen", "kitten"), ("a b c", "c b a")]:
        assert word_distance(gold, pred) == pytest.approx(jiwer.wer(gold, pred))
        assert char_distance(gold, pred) == pytest.approx(levenshtein(gold, pred) / max(len(gold), len(pred)))
    assert levenshtein("kitten", "sitting") == 3
    assert word_distance("seven", "seven am pm") == 2.0  # WER is not capped at 1


def test_entities_without_type_or_filler_are_named_errors():
    with pytest.raises(ValueError, match="type"):
        slu_f1([([E("date", "today")], [{"filler": "today"}])])


# ---- the scorer on a run dir written by hand ---------------------------------------------------------
def _episode_and_state(ep_id, calls, kind, facts, engine, snr, intent, slots, done_calls=None):
    """An episode whose expected state is ``calls`` run on the home environment, and the final state
    of the calls a run made (``done_calls``, default the same)."""
    from speechlm.agent.calls import Call
    from speechlm.agent.env import make_env
    from speechlm.agent.episodes import Episode

    def run(cs):
        env = make_env()
        for c in cs:
            env.execute(Call.from_dict(c))
        return env.snapshot()

    ep = Episode(id=ep_id, turns=[{"text": "x", "audio": None}], expected_calls=calls, expected_state=run(calls),
                 answer_facts=facts, intent=intent, slots=slots, kind=kind, split="test",
                 meta={"engine": engine, "snr": snr})
    return ep, run(done_calls if done_calls is not None else calls)


def _write_run(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "predictions.jsonl", "w") as fp, open(run_dir / "final_states.jsonl", "w") as fs:
        for pred, state in rows:
            fp.write(json.dumps(pred) + "\n")
            fs.write(json.dumps({"id": pred["id"], "state": state}) + "\n")


def _pred(ep_id, calls, answer, intent, entities, total, invalid=0, errors=0):
    made = [{"name": "lights", "args": {"action": "on", "house_place": "attic"}, "ok": False, "result": "error: x"}] * errors
    made += [{**c, "ok": True, "result": "ok: done"} for c in calls]
    steps = [{"kind": "invalid"}] * invalid + [{"kind": "call"}] * len(made) + [{"kind": "answer"}]
    return {"id": ep_id, "mode": "e2e", "intent": intent, "entities": entities, "calls": made, "answer": answer,
            "ended": "answer",
            "steps": steps, "invalid_calls": [{"text": "zz"}] * invalid, "n_steps": len(made) + 1,
            "timings": {"ttft": None, "first_call": total / 2, "total": total}, "audio_duration": 2.0}


@pytest.fixture
def scored_run(tmp_path):
    off = {"name": "lights", "args": {"action": "off", "house_place": "kitchen"}}
    alarm7 = {"name": "alarm", "args": {"action": "set", "time": "seven am"}}
    alarm8 = {"name": "alarm", "args": {"action": "set", "time": "eight am"}}
    e1, s1 = _episode_and_state("e1", [off], "atomic", ["off"], "espeak-ng", None, "iot_hue_lightoff",
                                [["house_place", "kitchen"]])
    e2, s2 = _episode_and_state("e2", [alarm7], "atomic", [], "flite", 10, "alarm_set", [["time", "seven am"]],
                                done_calls=[alarm8])
    e3, s3 = _episode_and_state("e3", [off, alarm7], "compositional", [], "flite", 10, "iot_hue_lightoff",
                                [["house_place", "kitchen"]], done_calls=[off])
    e4, s4 = _episode_and_state("e4", [alarm7], "recovery", [], "festival", 0, "alarm_set", [["time", "seven am"]])
    rows = [
        (_pred("e1", [off], "the kitchen lights are off", "iot_hue_lightoff", [E("house_place", "kitchen")], 1.0), s1),
        (_pred("e2", [alarm8], "done", "alarm_set", [E("time", "eight am")], 2.0, invalid=1), s2),
        (_pred("e3", [off], "done", "iot_hue_lightoff", [E("house_place", "kitchen")], 3.0), s3),
        (_pred("e4", [alarm7], "done", "alarm_set", [E("time", "seven am")], 4.0, errors=1), s4),
    ]
    _write_run(tmp_path / "run", rows)
    return tmp_path / "run", [e1, e2, e3, e4]


def test_agent_metrics_of_a_run(scored_run):
    from speechlm.agent.score import score_run

    run, eps = scored_run
    s = score_run(run, eps, "e2e", "unit")
    assert s["success"] == 50.0 and s["success_atomic"] == 50.0 and s["success_compositional"] == 0.0
    assert s["gap"] == 50.0 and s["success_recovery"] == 100.0
    assert s["n_tool_error"] == 1 and s["recovery_rate"] == 100.0
    assert s["call_em"] == 50.0 and s["intent_acc"] == 100.0
    # SLU-F1 over the 4 first calls: one of 4 fillers off by one word of two ("eight am")
    assert s["slu_f1"] == pytest.approx(100 * slu_f1([
        ([E("house_place", "kitchen")], [E("house_place", "kitchen")]), ([E("time", "seven am")], [E("time", "eight am")]),
        ([E("house_place", "kitchen")], [E("house_place", "kitchen")]), ([E("time", "seven am")], [E("time", "seven am")]),
    ])["slu_f1"])
    assert s["slu_f1"] == pytest.approx(100 * 8 / (8 + 0.5 + 0.625))  # tp 4+4, fp = fn = WER 1/2 + chars 5/8
    assert s["invalid_rate"] == pytest.approx(100 * 1 / 10)  # 1 invalid of 10 decoded turns (2+3+2+3)
    assert s["turns"] == pytest.approx((2 + 2 + 2 + 3) / 4)
    assert s["total_median"] == pytest.approx(2.5) and s["first_call_median"] == pytest.approx(1.25)
    assert s["rtf"] == pytest.approx(10.0 / 8.0)
    assert s["by_engine"]["flite"] == {"n": 2, "success": 0.0} and s["engine_gap"] == 100.0
    assert s["by_snr"]["clean"]["success"] == 100.0 and s["by_snr"]["10"]["success"] == 0.0
    assert (run / "success_vs_snr.png").stat().st_size > 1000
    scored = [json.loads(line) for line in (run / "scored.jsonl").read_text().splitlines()]
    assert [r["success"] for r in scored] == [True, False, False, True]


def test_missing_predictions_fail_and_foreign_ones_are_errors(scored_run):
    from speechlm.agent.score import score_run

    run, eps = scored_run
    lines = (run / "predictions.jsonl").read_text().splitlines()
    (run / "predictions.jsonl").write_text("\n".join(lines[1:]) + "\n")
    s = score_run(run, eps, "e2e", "unit")
    assert s["n_missing"] == 1 and s["success"] == 25.0
    with pytest.raises(ValueError, match="not in the episode file"):
        score_run(run, eps[2:], "e2e", "unit")


def test_runs_side_by_side_in_results_md_and_a_rerun_replaces_its_row(scored_run, tmp_path):
    from speechlm.agent.episodes import write_episodes
    from speechlm.cli import main

    run, eps = scored_run
    ep_file = tmp_path / "test_heldout.jsonl"
    write_episodes(ep_file, eps)
    results = tmp_path / "RESULTS.md"
    other = tmp_path / "cascade_run"
    shutil.copytree(run, other)
    for name, d in (("e2e", run), ("cascade", other), ("e2e", run)):
        assert main(["agent", "score", "--run-dir", str(d), "--episodes", str(ep_file), "--name", name,
                     "--results", str(results)]) == 0
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| e2e ") or line.startswith("| cascade ")]
    assert len(rows) == 2, text
    assert "## test_heldout / agent" in text and "success %" in text and "SLU-F1 %" in text
    assert rows[0].split("|")[3].strip() == "50.0"  # success % after model and episode count
    assert "success by engine: espeak-ng: 100.0% of 1" in text and "how episodes ended: answer 4" in text
    assert (tmp_path / "success_vs_snr_test_heldout.png").is_file()


def test_episodes_without_a_success_check_are_left_out_of_success(scored_run):
    from speechlm.agent.score import score_run

    run, eps = scored_run
    eps[1].expected_state, eps[1].answer_facts = None, []  # e2 (a failure) can no longer be checked
    s = score_run(run, eps, "e2e", "unit")
    assert s["n_unchecked"] == 1 and s["success"] == pytest.approx(200 / 3) and s["success_atomic"] == 100.0
    assert s["intent_acc"] == 100.0 and s["n_episodes"] == 4  # the other metrics still count it


def test_heard_wer_of_what_the_agent_wrote_down(tmp_path):
    """Heard WER: the loop's transcripts against the user turns' words, all turns and requests only,
    by engine; a turn the agent never reached counts nothing."""
    from speechlm.agent.score import score_run

    off = {"name": "lights", "args": {"action": "off", "house_place": "kitchen"}}
    e1, s1 = _episode_and_state("e1", [off], "atomic", [], "espeak-ng", None, "iot_hue_lightoff", [])
    e2, s2 = _episode_and_state("e2", [off], "recovery", [], "flite", None, "iot_hue_lightoff", [])
    e1.turns = [{"text": "Turn off the kitchen lights", "audio": None}]
    e2.turns = [{"text": "lights off", "audio": None}, {"text": "in the kitchen", "audio": None},
                {"text": "never reached", "audio": None}]
    p1 = {**_pred("e1", [off], "", None, [], 1.0), "transcripts": ["turn of the kitchen light's"]}  # 2 of 5 words
    p2 = {**_pred("e2", [off], "", None, [], 1.0), "transcripts": ["lights off", "the kitchen"]}  # 0 of 2, 1 of 3
    _write_run(tmp_path / "run", [(p1, s1), (p2, s2)])
    s = score_run(tmp_path / "run", [e1, e2], "e2e", "unit")
    assert s["heard_wer"] == pytest.approx(100 * 3 / 10)
    assert s["heard_wer_first"] == pytest.approx(100 * 2 / 7)
    assert s["heard_wer_by_engine"] == {"espeak-ng": pytest.approx(40.0), "flite": pytest.approx(20.0)}


def test_a_time_spelled_another_way_is_the_same_call():
    from speechlm.agent.score import call_key

    alarm = {"name": "alarm", "args": {"action": "set", "time": "nine thirty am", "date": "wednesday"}}
    for same in ("half an hour before ten am", "half past nine am", "9:30"):
        assert call_key({**alarm, "args": {**alarm["args"], "time": same}}) == call_key(alarm), same
    assert call_key({**alarm, "args": {**alarm["args"], "time": "an hour before ten am"}}) != call_key(alarm)
    odd = {"name": "alarm", "args": {"action": "set", "time": "teatime"}}  # not a time: compared as written
    assert call_key(odd) != call_key({"name": "alarm", "args": {"action": "set", "time": "tea time"}})
