"""Validation and repair of Kaldi data dirs (see :mod:`speechlm.data.kaldi`)."""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from speechlm.data.kaldi import (
    KNOWN_FILES, DataDir, Problem, _sort_key, read_entries, spk2utt_from_utt2spk,
)

log = logging.getLogger(__name__)


def _file_problems(path: Path) -> tuple[list[Problem], dict[str, str]]:
    problems: list[Problem] = []
    entries = read_entries(path, problems)
    seen: dict[str, int] = {}
    prev = None
    reported_unsorted = False
    for e in entries:
        if e.id in seen:
            problems.append(Problem(str(path), e.line, e.id, f"duplicate id (first on line {seen[e.id]})"))
            continue
        seen[e.id] = e.line
        if prev is not None and _sort_key(e.id) < _sort_key(prev) and not reported_unsorted:
            problems.append(Problem(str(path), e.line, e.id, f"not sorted: comes after {prev!r} (run `speechlm fix-data`)"))
            reported_unsorted = True
        prev = e.id
    mapping = {}
    for e in entries:
        mapping.setdefault(e.id, e.value)
    return problems, mapping


def _check_audio(d: Path, wav: dict[str, str], problems: list[Problem]) -> None:
    from speechlm.data.audio import AudioError, read_audio

    lines = {e.id: e.line for e in read_entries(d / "wav.scp", [])}
    for uid, value in tqdm(sorted(wav.items()), desc="checking audio", leave=False, disable=len(wav) < 500):
        try:
            if value.endswith("|"):
                read_audio(value, uid)
            else:
                import soundfile as sf

                if not Path(value).is_file():
                    raise AudioError(f"audio file not found: {value}")
                if sf.info(value).frames == 0:
                    raise AudioError(f"audio {value} is empty")
        except Exception as e:
            msg = str(e).removeprefix(f"utterance {uid}: ")
            problems.append(Problem(str(d / "wav.scp"), lines.get(uid), uid, f"unreadable audio: {msg}"))


def _spk2utt_problems(path: Path, spk2utt: dict[str, str], utt2spk: dict[str, str]) -> list[Problem]:
    """One problem per speaker whose spk2utt line disagrees with utt2spk, naming the utterances."""
    lines = {e.id: e.line for e in read_entries(path, [])}
    expected = {s: set(v.split()) for s, v in spk2utt_from_utt2spk(utt2spk).items()}
    given = {s: set(v.split()) for s, v in spk2utt.items()}
    fix = "(run `speechlm fix-data` to rebuild spk2utt from utt2spk)"

    def few(ids: set[str]) -> str:
        ids_ = sorted(ids, key=_sort_key)
        return ", ".join(ids_[:5]) + (f" and {len(ids_) - 5} more" if len(ids_) > 5 else "")

    out = []
    for spk in sorted(set(expected) | set(given), key=_sort_key):
        want, have = expected.get(spk, set()), given.get(spk)
        if have is None:
            out.append(Problem(str(path), None, spk, f"speaker is in utt2spk ({few(want)}) but missing here {fix}"))
        elif have != want:
            parts = []
            if have - want:
                parts.append(f"lists {few(have - want)}, which utt2spk does not give to this speaker")
            if want - have:
                parts.append(f"misses {few(want - have)}, which utt2spk gives to this speaker")
            out.append(Problem(str(path), lines.get(spk), spk, f"does not match utt2spk: {'; '.join(parts)} {fix}"))
    return out


def validate_dir(d: Path, check_audio: bool = True) -> list[Problem]:
    """Check files, ids and audio of data dir ``d``; returns every problem found."""
    if not d.is_dir():
        return [Problem(str(d), None, None, "data dir not found")]
    problems: list[Problem] = []
    files: dict[str, dict[str, str]] = {}
    for name in KNOWN_FILES:
        if (d / name).is_file():
            p, m = _file_problems(d / name)
            problems += p
            files[name] = m
    if "wav.scp" not in files and "text" not in files:
        problems.append(Problem(str(d), None, None, "neither wav.scp nor text exists"))
        return problems

    # Which ids must agree: utterance ids come from segments if present, else wav.scp.
    if "segments" in files:
        utts = set(files["segments"])
        recs = set(files.get("wav.scp", {}))
        for uid, v in files["segments"].items():
            parts = v.split()
            if len(parts) != 3:
                problems.append(Problem(str(d / "segments"), None, uid, f"expected 'rec start end', got {v!r}"))
                continue
            if parts[0] not in recs:
                problems.append(Problem(str(d / "segments"), None, uid, f"recording {parts[0]!r} is not in wav.scp"))
            try:
                if float(parts[1]) < 0 or (float(parts[2]) >= 0 and float(parts[2]) <= float(parts[1])):
                    raise ValueError
            except ValueError:
                problems.append(Problem(str(d / "segments"), None, uid, f"bad times {parts[1]} {parts[2]}"))
    else:
        utts = set(files.get("wav.scp", files.get("text", {})))
    ref = "segments" if "segments" in files else ("wav.scp" if "wav.scp" in files else "text")
    for name in ("text", "utt2spk", "utt2num_samples") + (() if "segments" in files else ("wav.scp",)):
        if name not in files or name == ref:
            continue
        for uid in sorted(utts - set(files[name]), key=_sort_key):
            problems.append(Problem(str(d / name), None, uid, f"id is in {ref} but missing here"))
        for uid in sorted(set(files[name]) - utts, key=_sort_key):
            problems.append(Problem(str(d / name), None, uid, f"id is not in {ref}"))
    if "utt2num_samples" in files:
        for uid, v in files["utt2num_samples"].items():
            if not v.isdigit():
                problems.append(Problem(str(d / "utt2num_samples"), None, uid, f"not a sample count: {v!r}"))
    if "utt2spk" not in files and ("wav.scp" in files or "segments" in files):
        # Speaker prompts and per-speaker splits need it; Kaldi treats it as mandatory too.
        problems.append(Problem(str(d / "utt2spk"), None, None,
                                "missing: every speech data dir needs utt2spk ('utt speaker' lines; with no speaker "
                                "labels, make each utterance its own speaker: `awk '{print $1, $1}' wav.scp`), "
                                "then `speechlm fix-data` writes spk2utt"))
    if "spk2utt" in files and "utt2spk" in files:
        problems += _spk2utt_problems(d / "spk2utt", files["spk2utt"], files["utt2spk"])
    if check_audio and "wav.scp" in files:
        _check_audio(d, files["wav.scp"], problems)
    return problems


def _durations(d: Path, files: dict[str, dict[str, str]]) -> dict[str, float]:
    """Seconds per utterance (from segments, or the audio headers; pipes are decoded)."""
    import soundfile as sf

    from speechlm.data.audio import read_audio

    if "segments" in files:
        out = {}
        for u, v in files["segments"].items():
            _, a, b = v.split()
            out[u] = float(b) - float(a) if float(b) >= 0 else float("inf")
        return out
    out = {}
    for u, v in tqdm(files.get("wav.scp", {}).items(), desc="reading durations", leave=False, disable=None):
        try:
            if v.endswith("|"):
                wav, sr = read_audio(v, u)
                out[u] = len(wav) / sr
            else:
                info = sf.info(v)
                out[u] = info.frames / info.samplerate
        except Exception:  # unreadable audio is reported by validation
            continue
    return out


class DropLimitError(ValueError):
    """fix-data would drop more utterances than allowed; nothing was written."""


def fix_dir(src: Path, dst: Path | None = None, check_audio: bool = True,
            min_duration: float | None = None, max_duration: float | None = None,
            max_drop: float | None = None) -> list[str]:
    """Sort files and drop entries that are malformed, duplicated, inconsistent or unreadable,
    and (optionally) utterances shorter than ``min_duration`` or longer than ``max_duration`` seconds.

    Writes the fixed dir to ``dst`` (default: in place, keeping the files it changes in
    ``src/.backup/``) and returns one line per dropped entry. With ``max_drop`` (a share, e.g.
    0.1), raises :class:`DropLimitError` before writing anything when faults (not the duration
    bounds, which are asked for) would drop more than that share of the utterances: audio that
    cannot be read at all usually means relative paths or an unmounted disk, not bad data.
    """
    dst = dst or src
    problems = validate_dir(src, check_audio)
    dropped: list[str] = []
    bad_utts: set[str] = set()
    files: dict[str, dict[str, str]] = {}
    for name in KNOWN_FILES:
        if (src / name).is_file():
            files[name] = {}
            for e in read_entries(src / name, []):
                if e.id in files[name]:
                    dropped.append(f"{src / name}:{e.line} [{e.id}]: duplicate id, kept the first")
                    continue
                files[name][e.id] = e.value
    # Problems that make an utterance unusable; id mismatches between files are handled below.
    fatal = ("unreadable audio", "bad times", "not a sample count", "expected 'rec", "empty transcript", "no value")
    for p in problems:
        if (p.file.endswith("segments") and "is not in wav.scp" in p.message) or any(m in p.message for m in fatal):
            dropped.append(str(p))
            if p.id:
                bad_utts.add(p.id)
        elif p.line and p.id is None:  # empty or non-UTF-8 line
            dropped.append(str(p))
    utt_files = [n for n in ("segments", "wav.scp", "text", "utt2spk", "utt2num_samples") if n in files]
    if "segments" in files:
        utt_files.remove("wav.scp")
    common = set.intersection(*(set(files[n]) for n in utt_files)) if utt_files else set()
    for n in utt_files:
        for uid in sorted(set(files[n]) - common, key=_sort_key):
            dropped.append(f"{src / n} [{uid}]: not present in every file ({', '.join(utt_files)})")
    keep = common - bad_utts
    every = set().union(*(set(files[n]) for n in utt_files)) if utt_files else set()
    if max_drop is not None and every and len(every - keep) > max_drop * len(every):
        raise DropLimitError(_drop_refusal(src, every, keep, dropped, max_drop))
    if min_duration is not None or max_duration is not None:
        for u, secs in sorted(_durations(src, files).items()):
            if u in keep and ((min_duration is not None and secs < min_duration)
                              or (max_duration is not None and secs > max_duration)):
                keep.discard(u)
                dropped.append(f"{src / 'wav.scp'} [{u}]: duration {secs:.2f} s outside "
                               f"[{min_duration or 0}, {max_duration or 'inf'}]")
    for n in utt_files:
        files[n] = {u: v for u, v in files[n].items() if u in keep}
    for n, mapping in _extra_utt_files(src, every).items():
        files[n] = {u: v for u, v in mapping.items() if u in keep}
    if "segments" in files:
        used = {v.split()[0] for v in files["segments"].values()}
        files["wav.scp"] = {r: v for r, v in files["wav.scp"].items() if r in used}
    if "utt2spk" in files:
        files["spk2utt"] = spk2utt_from_utt2spk(files["utt2spk"])
    if dst.resolve() == src.resolve():
        _save_in_place(src, files)
    else:
        DataDir(dst, files).save()
    for line in dropped:
        log.warning("dropped: %s", line)
    log.info("fixed data dir %s -> %s: kept %d utterances, dropped %d entries", src, dst, len(keep), len(dropped))
    return dropped


def _extra_utt_files(src: Path, utts: set[str]) -> dict[str, dict[str, str]]:
    """Other per-utterance files of ``src`` (e.g. ``text.2``, ``history``, ``response``: every id is an
    utterance), so that task templates reading them still find them in the fixed dir."""
    extra = {}
    for f in sorted(src.iterdir()):
        if f.name in KNOWN_FILES or f.name.startswith(".") or not f.is_file():
            continue
        try:
            entries = read_entries(f, [])
        except UnicodeDecodeError:
            continue
        mapping = {e.id: e.value for e in entries if e.id}
        if mapping and set(mapping) <= utts:
            extra[f.name] = mapping
        else:
            log.warning("%s: not keyed by the utterances of %s, not carried over", f, src)
    return extra


def _drop_refusal(src: Path, every: set[str], keep: set[str], dropped: list[str], max_drop: float) -> str:
    """The message of a refused fix: how many, why (the commonest reasons), and what to do."""
    import collections

    gone = every - keep
    reasons = collections.Counter()
    for line in dropped:
        msg = line.split("]: ", 1)[-1]
        reasons["audio file not found" if "not found" in msg else msg.split(": ")[0].split(" (")[0]] += 1
    top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
    hint = ""
    wav = src / "wav.scp"
    if wav.is_file() and any("not found" in line for line in dropped):
        rel = [e.value for e in read_entries(wav, []) if not e.value.endswith("|") and not Path(e.value).is_absolute()]
        if rel:
            hint = (f" wav.scp has relative paths (e.g. {rel[0]}), read from the current directory {Path.cwd()}: "
                    "run from the directory they are relative to.")
    return (f"{src}: fixing would drop {len(gone)} of {len(every)} utterances ({len(gone) / len(every):.0%}), more "
            f"than --max-drop {max_drop:.0%}; nothing was written. Reasons: {top}.{hint} If the drops are right, "
            "pass --force (or a larger --max-drop).")


def _save_in_place(d: Path, files: dict[str, dict[str, str]]) -> None:
    """Rewrite the files of ``d`` that change, first copying their originals to ``d/.backup/``
    (``.backup.2/``, ... when an earlier fix already left one: the first originals are never lost)."""
    import shutil

    from speechlm.data.kaldi import format_file
    from speechlm.utils.fileio import write_text

    changed = {n: format_file(m) for n, m in files.items()
               if not (d / n).is_file() or (d / n).read_bytes() != format_file(m).encode("utf-8")}
    if not changed:
        log.info("%s: already fixed, nothing changed", d)
        return
    backup, i = d / ".backup", 1
    while backup.exists():
        i += 1
        backup = d / f".backup.{i}"
    backup.mkdir()
    for n in changed:
        if (d / n).is_file():
            shutil.copy2(d / n, backup / n)
    for n, text in changed.items():
        write_text(d / n, text)
    log.info("%s: originals of the changed files (%s) kept in %s", d, ", ".join(changed), backup)
