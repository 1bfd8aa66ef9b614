"""Import SLURP-format annotation files (Bastianelli et al. 2020) as episodes.

A SLURP file is JSONL, one row per sentence::

    {"slurp_id": 1501, "sentence": "wake me up at five am this week",
     "sentence_annotation": "wake me up at [time : five am] [date : this week]",
     "scenario": "alarm", "action": "set", "intent": "alarm_set",
     "recordings": [{"file": "audio-1490200943-headset.flac", ...}, ...]}

The intent is built as ``scenario_action`` (never read from ``intent``, which is malformed in
some rows); slots are the ``[type : value]`` spans of ``sentence_annotation``. With a wav.scp
(``key path`` lines) keyed by ``slurp_id`` each row becomes one spoken episode; keyed by a
recording's ``file`` (with or without its extension), one episode per listed recording.
Users bring SLURP's files; this toolkit never ships them (and never trains on devel or test).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from speechlm.agent.calls import normalize_words
from speechlm.agent.episodes import Episode
from speechlm.utils.fileio import iter_jsonl

log = logging.getLogger(__name__)

SLOT_RE = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")


def parse_annotation(annotation: str, where: str = "sentence_annotation") -> tuple[str, list[tuple[str, str]]]:
    """``"wake me at [time : five am]"`` -> ``("wake me at five am", [("time", "five am")])``.

    Slot types lose their spaces' surroundings (``[ date : today ]`` -> ``date``); a bracket that
    does not close or holds no ``:`` is an error naming ``where``."""
    slots: list[tuple[str, str]] = []
    out: list[str] = []
    pos = 0
    for m in SLOT_RE.finditer(annotation):
        between = annotation[pos:m.start()]
        if "[" in between or "]" in between:
            raise ValueError(f"{where}: unbalanced or malformed bracket in {annotation!r}")
        out.append(between)
        slot_type = m.group(1).strip().replace(" ", "_")
        value = normalize_words(m.group(2))
        if not slot_type or not value:
            raise ValueError(f"{where}: empty slot type or value in {m.group(0)!r}")
        slots.append((slot_type, value))
        out.append(m.group(2))
        pos = m.end()
    tail = annotation[pos:]
    if "[" in tail or "]" in tail:
        raise ValueError(f"{where}: unbalanced or malformed bracket in {annotation!r} (a slot is '[type : value]')")
    out.append(tail)
    return normalize_words("".join(out)), slots


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """``key value`` lines (value may hold spaces, e.g. a ``cmd |`` pipe); errors name the line."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'key path', got {line.strip()!r}")
            if parts[0] in table:
                raise ValueError(f"{path}:{n}: duplicate key {parts[0]!r}")
            table[parts[0]] = parts[1]
    return table


def _recording_keys(rec: dict) -> list[str]:
    name = str(rec.get("file", ""))
    return [name, Path(name).stem] if name else []


def import_slurp(slurp_jsonl: str | os.PathLike, wav_scp: str | os.PathLike | None = None,
                 split: str = "test", check_calls: bool = True) -> list[Episode]:
    """Episodes of a SLURP file: intent ``scenario_action``, slots from ``sentence_annotation``,
    the expected call from :func:`speechlm.agent.intents.intent_to_call`.

    With ``wav_scp``, rows whose id and recordings are all missing from it are skipped (logged).
    ``check_calls`` runs each expected call on the default home state: when the tools accept it,
    the episode gets the state it leaves (``expected_state``) and, for a query, its result text
    as the answer fact; when they refuse it (a slot type the tool does not take, a value it
    cannot read), ``meta["tool_error"]`` says why and only the call, intent and slots are scored."""
    from speechlm.agent.generator import transcript_form
    from speechlm.agent.intents import INTENTS, intent_to_call

    scp = read_scp(wav_scp) if wav_scp else None
    episodes: list[Episode] = []
    skipped_audio = 0
    env = None
    if check_calls:
        from speechlm.agent.env import make_env

        env = make_env("home")
        start = env.snapshot()
    for where, row in iter_jsonl(slurp_jsonl):
        for key in ("slurp_id", "sentence_annotation", "scenario", "action"):
            if key not in row:
                raise ValueError(f"{where}: SLURP row lacks {key!r} (has {', '.join(sorted(row))})")
        intent = f"{str(row['scenario']).strip().lower()}_{str(row['action']).strip().lower()}"
        if intent not in INTENTS:
            raise ValueError(f"{where}: intent {intent!r} (scenario_action) is not one of SLURP's 59 intents")
        text, slots = parse_annotation(str(row["sentence_annotation"]), f"{where}: sentence_annotation")
        # a transcript's words as the generator writes them: lower case, no punctuation but apostrophes
        sentence = transcript_form(normalize_words(row.get("sentence") or text))
        call = intent_to_call(intent, slots)
        sid = str(row["slurp_id"])
        meta = {"slurp_id": sid, "scenario": row["scenario"], "action": row["action"], "source": str(slurp_jsonl)}
        expected_state, facts = None, []
        if env is not None:
            from speechlm.agent.generator import expected_state_of
            from speechlm.agent.tools import ToolError

            env.reset(start)
            try:
                result = env.execute(call)
            except ToolError as e:
                meta["tool_error"] = str(e)
            else:  # as for generated episodes: the state it leaves, the result of a query
                expected_state = expected_state_of(env.state)
                if expected_state == expected_state_of(start):
                    facts = [normalize_words(result.get("text", ""))]
        audios: list[tuple[str, str | None, dict]] = []
        if scp is None:
            audios.append((f"slurp-{sid}", None, {}))
        elif sid in scp:
            audios.append((f"slurp-{sid}", scp[sid], {}))
        else:
            for i, rec in enumerate(row.get("recordings") or []):
                key = next((k for k in _recording_keys(rec) if k in scp), None)
                if key is not None:
                    audios.append((f"slurp-{sid}-{i}", scp[key], {"recording": rec.get("file")}))
        if not audios:
            skipped_audio += 1
            continue
        for eid, audio, extra in audios:
            episodes.append(Episode(
                id=eid, turns=[{"text": sentence, "audio": audio}], initial_state=None,
                expected_calls=[call.to_dict()], expected_state=expected_state, answer_facts=facts, intent=intent,
                slots=[list(s) for s in slots], kind="atomic", split=split, meta={**meta, **extra}))
    if skipped_audio:
        log.warning("%s: %d rows have no audio in %s (neither slurp_id nor a recording file is a key); skipped",
                    slurp_jsonl, skipped_audio, wav_scp)
    log.info("%s: imported %d episodes", slurp_jsonl, len(episodes))
    return episodes
