"""Episodes (with audio) -> Kaldi data dirs for the voice-agent task templates.

Every assistant step of an episode's reference dialogue becomes one utterance: the speech of
the user turn it answers, the dialogue before it as text, and the assistant turn to produce::

    wav.scp          <utt> <the current user turn's audio>
    text             <utt> <the current user turn's words>          (asr, command's request)
    history          <utt> <assistant and tool turns so far>        (spoken_dialogue: no user words,
                                                                      the e2e model only hears them)
    history.cascade  <utt> <earlier user turns too, as "user ...">  (command: the cascade's parser)
    known            <utt> <names of the home said in the user turn, "slot = name ; ...", or none>
                                                                     (command: speechlm.agent.known)
    response         <utt> <call ... | say ...>                     (the target turn)
    history.monologue  <utt> <the cascade form, plus the current user turn once it was written>
    response.monologue <utt> <"user <words> | " + the target turn on a user turn's first step,
                              the target turn on later steps>  (spoken_dialogue_monologue: the e2e
                              model writes what it heard before it acts, an inner monologue)
    text.2           <utt> <tool call>       (first step of a user turn that calls a tool: spoken_command)
    utt2spk, spk2utt (speaker = the episode's voice), utt2num_samples

The history forms are what :func:`speechlm.agent.loop.history_text` gives the model at run
time in the e2e (with or without a monologue) and the cascade modes (``none`` when empty). Utterance ids are
``<speaker>-<episode id>-<step>`` so that files sorted by id group a speaker's utterances.

A second writer makes an ``asr`` data dir with one utterance per user turn (not per step).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from speechlm.agent.calls import CALL_PREFIX, EMPTY_HISTORY, TURN_SEP, USER_PREFIX, canonical_turn, render_history
from speechlm.agent.env import make_env
from speechlm.agent.episodes import Episode
from speechlm.agent.known import catalogue, known_names
from speechlm.data.kaldi import spk2utt_from_utt2spk, write_file

log = logging.getLogger(__name__)

_ID_BAD = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass
class Step:
    """One assistant step of an episode's reference dialogue."""

    user: int  # index of the user turn it answers
    history: str  # e2e form
    history_cascade: str  # cascade form
    target: str  # "call ..." or "say ..."
    first: bool  # the first step after its user turn
    history_monologue: str = ""  # e2e with an inner monologue
    target_monologue: str = ""  # "user <words> | <target>" on a first step, else the target
    known: str = EMPTY_HISTORY  # names of the home said in the user turn (speechlm.agent.known)


def reference_of(episode: Episode) -> list[dict]:
    """The reference dialogue (user/assistant/tool turns) of ``episode``: ``meta["reference"]``
    as the generator wrote it, else made by running its expected calls (imported episodes)."""
    ref = episode.meta.get("reference")
    if ref:
        return ref
    from speechlm.agent.generator import reference_dialogue

    return reference_dialogue(episode)


def dialogue_steps(episode: Episode) -> list[Step]:
    """The assistant steps of ``episode`` with the history each one is conditioned on."""
    ref = reference_of(episode)
    names = catalogue(make_env(state=episode.initial_state).state)
    steps: list[Step] = []
    done: list[dict] = []  # turns before the current user turn plus the steps after it
    user = -1
    first = False
    for i, turn in enumerate(ref):
        role = turn["role"]
        if role == "user":
            user += 1
            first = True
            done.append(turn)
            continue
        if role == "assistant":
            if user < 0:
                raise ValueError(f"episode {episode.id}: reference turn {i} is an assistant turn before any user turn")
            # the canonical form: episodes written by an older generator (``k=v`` calls) train
            # on what the loop renders and parses today
            turn = {**turn, "text": canonical_turn(turn["text"])}
            current = max(j for j, t in enumerate(done) if t["role"] == "user")
            e2e = [t for t in done if t["role"] != "user"]
            cascade = [t for j, t in enumerate(done) if j != current]
            if first:
                words = " ".join(episode.turns[user]["text"].split())
                mono_history, mono_target = render_history(cascade), f"{USER_PREFIX}{words}{TURN_SEP}{turn['text']}"
            else:
                mono_history, mono_target = render_history(done), turn["text"]
            steps.append(Step(user, render_history(e2e), render_history(cascade), turn["text"], first,
                              mono_history, mono_target,
                              known_names(" ".join(episode.turns[user]["text"].split()), names)))
            first = False
        done.append(turn)
    if user + 1 != len(episode.turns):
        raise ValueError(f"episode {episode.id}: its reference dialogue has {user + 1} user turns, "
                         f"the episode {len(episode.turns)}")
    return steps


def speaker_of(episode: Episode) -> str:
    spk = episode.meta.get("voice") or episode.meta.get("speaker") or episode.id
    return _ID_BAD.sub("_", str(spk))


def _num_samples(path: str) -> int | None:
    try:
        import soundfile as sf

        return int(sf.info(path).frames)
    except Exception:  # a pipe or an unreadable file: leave utt2num_samples out
        return None


def write_dialogue_dir(episodes: list[Episode], out: str | os.PathLike, require_audio: bool = True) -> dict:
    """Write the step data dir of ``episodes`` to ``out``; returns ``{"utterances", "episodes", "speakers"}``.

    Episodes whose user turns lack audio are an error when ``require_audio`` (synthesize them
    first); else they are written without ``wav.scp`` (a text-only ``command`` data dir)."""
    out = Path(out)
    files: dict[str, dict[str, str]] = {k: {} for k in ("wav.scp", "text", "history", "history.cascade", "known",
                                                         "response", "history.monologue", "response.monologue",
                                                         "text.2", "utt2spk", "utt2num_samples")}
    missing_audio = [ep.id for ep in episodes if not all(t.get("audio") for t in ep.turns)]
    if missing_audio and require_audio:
        raise ValueError(f"{len(missing_audio)} episode(s) have user turns without audio (e.g. "
                         f"{', '.join(missing_audio[:3])}); run `speechlm agent synth` first")
    with_audio = not missing_audio
    samples: dict[str, int | None] = {}
    for ep in episodes:
        spk = speaker_of(ep)
        for k, step in enumerate(dialogue_steps(ep)):
            utt = f"{spk}-{_ID_BAD.sub('_', ep.id)}-{k:02d}"
            if utt in files["text"]:
                raise ValueError(f"utterance id {utt} twice: episode ids must be unique")
            turn = ep.turns[step.user]
            files["text"][utt] = " ".join(turn["text"].split())
            files["history"][utt] = step.history
            files["history.cascade"][utt] = step.history_cascade
            files["known"][utt] = step.known
            files["response"][utt] = step.target
            files["history.monologue"][utt] = step.history_monologue
            files["response.monologue"][utt] = step.target_monologue
            files["utt2spk"][utt] = spk
            if step.first and step.target.startswith(CALL_PREFIX) and step.history == "none":
                files["text.2"][utt] = step.target[len(CALL_PREFIX):]
            if with_audio:
                audio = turn["audio"]
                files["wav.scp"][utt] = audio
                if audio not in samples:
                    samples[audio] = _num_samples(audio)
                files["utt2num_samples"][utt] = samples[audio]
    if not files["text"]:
        raise ValueError(f"{out}: no steps to write (no episodes)")
    if not with_audio or any(v is None for v in files["utt2num_samples"].values()):
        files.pop("utt2num_samples")
    else:
        files["utt2num_samples"] = {k: str(v) for k, v in files["utt2num_samples"].items()}
    if not with_audio:
        files.pop("wav.scp")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "utt2num_samples"):
        if name not in files and (out / name).exists():
            (out / name).unlink()  # a stale file from an earlier run would not match
    for name, mapping in files.items():
        write_file(out / name, mapping)
    write_file(out / "spk2utt", spk2utt_from_utt2spk(files["utt2spk"]))
    summary = {"utterances": len(files["text"]), "episodes": len(episodes),
               "speakers": len(set(files["utt2spk"].values()))}
    log.info("wrote %s: %d steps of %d episodes, %d speakers", out, *summary.values())
    return summary


def write_asr_dir(episodes: list[Episode], out: str | os.PathLike) -> dict:
    """One utterance per spoken user turn (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``) for
    the ``asr`` task; the same audio file spoken in two episodes is written once."""
    out = Path(out)
    wav, text, utt2spk = {}, {}, {}
    seen: set[str] = set()
    for ep in episodes:
        spk = speaker_of(ep)
        for i, turn in enumerate(ep.turns):
            if not turn.get("audio"):
                raise ValueError(f"episode {ep.id}: user turn {i} has no audio; run `speechlm agent synth` first")
            if turn["audio"] in seen:
                continue
            seen.add(turn["audio"])
            utt = f"{spk}-{_ID_BAD.sub('_', ep.id)}-u{i}"
            wav[utt], text[utt], utt2spk[utt] = turn["audio"], " ".join(turn["text"].split()), spk
    if not wav:
        raise ValueError(f"{out}: no user turns to write")
    out.mkdir(parents=True, exist_ok=True)
    for name, mapping in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        write_file(out / name, mapping)
    write_file(out / "spk2utt", spk2utt_from_utt2spk(utt2spk))
    log.info("wrote %s: %d user turns", out, len(wav))
    return {"utterances": len(wav)}
