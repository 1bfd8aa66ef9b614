"""What a recognizer hears of the episodes' user turns: episodes whose words are its transcripts.

A cascade's parser trained only on the words said meets, at run time, the words its recognizer
writes: ``garbage lights``, ``through crime stories``, a dropped ``off``. Episodes heard by
the same recognizer the cascade runs (Whisper with the loop's prompt, the transcript in the
loop's spoken form, names of the home snapped as the loop snaps them) keep their reference
calls and answers, so a parser trained on their data dir sees what it will read (``speechlm
agent hear``; in the voice-agent recipe it did not help: README, "Whisper's eight best").

The words said go to ``meta["said"]`` (one per user turn); the reference dialogue's user turns
(the history of later steps) read the heard words too. An episode with a turn heard as nothing
is left out (the loop cannot act on an empty transcript either). Transcripts are cached per
audio file in a JSONL file, one line as each is made, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from tqdm import tqdm

from speechlm.agent.env import make_env
from speechlm.agent.episodes import Episode
from speechlm.agent.known import catalogue, snap_names

log = logging.getLogger(__name__)


def heard_words(raw: str, names: dict, snap: float) -> str:
    """A recognizer's text as the cascade reads it: spoken form, then names snapped (``snap`` > 0)."""
    from speechlm.agent.loop import spoken_form

    words = spoken_form(raw)
    return snap_names(words, names, snap) if snap > 0 else words


def _read_cache(path: Path) -> dict[str, str]:
    """Audio path -> raw transcript; a torn last line (a killed run) is dropped."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                out[row["audio"]] = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s: a line that does not parse is dropped (a killed run's last)", path)
    return out


def hear_episodes(episodes: Iterable[Episode], transcribe: Callable[[str], str], cache: Optional[os.PathLike] = None,
                  snap: float = 0.85, audio_base: Optional[Path] = None, env: str = "home") -> list[Episode]:
    """Copies of ``episodes`` whose user turns read what ``transcribe(audio path) -> text`` heard.

    Every user turn needs audio (an error names the episode and turn otherwise). ``cache``: a
    JSONL file of transcripts by audio path, read first and appended to as they are made."""
    from speechlm.agent.datadir import reference_of
    from speechlm.agent.loop import resolve_audio

    episodes = list(episodes)
    for ep in episodes:
        for i, turn in enumerate(ep.turns):
            if not turn.get("audio"):
                raise ValueError(f"episode {ep.id}: user turn {i} has no audio; run `speechlm agent synth` first")
    done = _read_cache(Path(cache)) if cache else {}
    todo = sorted({t["audio"] for ep in episodes for t in ep.turns} - done.keys())
    if done:
        log.info("hear: %d transcripts cached in %s, %d to make", len(done), cache, len(todo))
    sink = open(cache, "a", encoding="utf-8") if cache else None
    if sink and sink.tell() > 0:
        with open(cache, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                sink.write("\n")  # a torn last line stays alone on its line, the next one parses
    try:
        for audio in tqdm(todo, desc="hear", unit="turn", disable=None):
            text = transcribe(resolve_audio(audio, audio_base))
            done[audio] = text
            if sink:
                sink.write(json.dumps({"audio": audio, "text": text}, ensure_ascii=False) + "\n")
                sink.flush()
    finally:
        if sink:
            sink.close()
    out, empty = [], 0
    for ep in episodes:
        names = catalogue(make_env(env, ep.initial_state).state)
        words = [heard_words(done[t["audio"]], names, snap) for t in ep.turns]
        if not all(words):
            empty += 1
            continue
        heard = copy.deepcopy(ep)
        for turn, w in zip(heard.turns, words):
            turn["text"] = w
        ref = copy.deepcopy(reference_of(ep))
        users = [t for t in ref if t["role"] == "user"]
        if len(users) != len(words):
            raise ValueError(f"episode {ep.id}: its reference dialogue has {len(users)} user turns, "
                             f"the episode {len(words)}")
        for t, w in zip(users, words):
            t["text"] = w
        heard.meta = {**heard.meta, "reference": ref, "said": [t["text"] for t in ep.turns]}
        out.append(heard)
    if empty:
        log.warning("hear: %d of %d episodes left out: a user turn heard as nothing", empty, len(episodes))
    return out
