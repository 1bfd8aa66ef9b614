"""Scoring an agent run (``predictions.jsonl`` + ``final_states.jsonl``) against its episodes.

Per episode: task success (:func:`speechlm.agent.episodes.success`: the final state matches the
expected one and the answer holds every answer fact), call exact match (:func:`calls_match`),
intent and entities (SLURP's SLU-F1 over the slots of the first call the environment accepted,
as the loop's ``predictions.jsonl`` gives them), invalid calls, steps, latency.

Summary (percentages unless said otherwise):

- ``success``, and by kind: ``success_atomic``, ``success_compositional`` and their ``gap``
  (atomic minus compositional, points), ``success_recovery`` (the recovery episodes);
- ``recovery_rate``: of the episodes in which a tool refused a call, the share that still
  succeeded (the agent read the error and corrected its call or asked back);
- ``call_em``, ``intent_acc``, ``slu_f1`` / ``word_f1`` / ``char_f1`` / ``span_f1``;
- ``invalid_rate``: invalid turns over decoded turns; ``turns``: assistant steps per episode;
- ``heard_wer`` / ``heard_wer_first``: word error rate of what the agent heard (the e2e model's
  monologue or the cascade's transcript) against the user turns' words, over every user turn it
  heard / over the requests (first turns) only; ``heard_wer_by_engine``;
- latency in seconds (median and 95th percentile): ``first_call_*``, ``total_*``, ``ttft_*``;
  ``rtf``: processing time over the audio's duration;
- by engine, voice, split and SNR (clean = no noise): success and counts, the cross-engine gap
  (best minus worst engine) and a success-vs-SNR plot.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from speechlm.agent.calls import Call, format_call, normalize_words
from speechlm.agent.episodes import Episode, success
from speechlm.agent.loop import spoken_form
from speechlm.agent.slu_f1 import SLUF1, levenshtein
from speechlm.agent.spoken import format_time, parse_time
from speechlm.utils.fileio import iter_jsonl

log = logging.getLogger(__name__)

#: RESULTS.md columns of the agent metric: (summary key, header, decimals)
AGENT_COLUMNS: list[tuple[str, str, int]] = [
    ("success", "success %", 1), ("success_atomic", "atomic %", 1), ("success_compositional", "compos. %", 1),
    ("gap", "gap pts", 1), ("success_recovery", "recovery ep. %", 1), ("recovery_rate", "recovery rate %", 1),
    ("call_em", "call EM %", 1), ("intent_acc", "intent acc %", 1), ("slu_f1", "SLU-F1 %", 1),
    ("word_f1", "word-F1 %", 1), ("char_f1", "char-F1 %", 1), ("invalid_rate", "invalid %", 1),
    ("heard_wer", "heard WER %", 1), ("turns", "turns/ep", 2), ("first_call_median", "to call s (med)", 3),
    ("total_median", "total s (med)", 3),
    ("total_p95", "total s (p95)", 3), ("ttft_median", "TTFT s (med)", 3), ("engine_gap", "engine gap pts", 1),
]


def _clock(args: dict) -> dict:
    """``args`` with a ``time`` the tools read as a clock time in its one spelling (``three hours
    before eleven am`` and ``eight am`` are the same alarm)."""
    if "time" not in args:
        return args
    try:
        return {**args, "time": format_time(parse_time(str(args["time"]), args.get("timeofday")))}
    except ValueError:
        return args


def call_key(c: dict) -> str:
    """Canonical text of a call dict (argument order, case, spaces and the spelling of a time do
    not matter)."""
    try:
        return format_call(Call(str(c["name"]), {str(k): str(v) for k, v in _clock(c.get("args") or {}).items()}))
    except ValueError:  # a value format_call refuses: compare normalised JSON instead
        return json.dumps({"name": c["name"], "args": {k: normalize_words(v) for k, v in sorted(c["args"].items())}})


def expected_outcomes(ep: Episode) -> tuple[list[dict], list[dict]]:
    """The episode's expected calls split into those the environment accepts and those it refuses,
    by replaying them in order on the initial state (an episode about an offline device expects
    the refused call)."""
    from speechlm.agent.env import make_env
    from speechlm.agent.tools import ToolError

    env = make_env("home", ep.initial_state)
    ok, refused = [], []
    for c in ep.expected_calls:
        try:
            env.execute(Call.from_dict(c))
            ok.append(c)
        except (ToolError, ValueError):
            refused.append(c)
    return ok, refused


def calls_match(ep: Episode, calls: list[dict]) -> bool:
    """Call exact match: the calls the environment accepted are the expected ones that it accepts
    (a multiset of canonical call texts), and every expected call it refuses was made too."""
    ok, refused = expected_outcomes(ep)
    accepted = [c for c in calls if c.get("ok", True)]
    made = Counter(call_key(c) for c in calls if not c.get("ok", True))
    return (Counter(call_key(c) for c in accepted) == Counter(call_key(c) for c in ok)
            and all(made[call_key(c)] > 0 for c in refused))


def read_jsonl(path: Path) -> dict[str, dict]:
    hint = "; rerun `speechlm agent run` (it drops torn lines)"
    return {rec["id"]: rec for _, rec in iter_jsonl(path, hint)}


def percentile(values: list[float], q: float) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(vals, q)) if vals else None


def pct(num: float, den: float) -> Optional[float]:
    return 100.0 * num / den if den else None


def score_episode(ep: Episode, pred: Optional[dict], state: Optional[dict]) -> dict:
    """The per-episode record (a missing prediction fails everything). Task success is None for an
    episode with neither an expected state nor answer facts (e.g. a SLURP row whose call the home
    tools refuse): nothing tells success from failure, so it is left out of the success rates."""
    meta = ep.meta or {}
    rec: dict[str, Any] = {"id": ep.id, "kind": ep.kind, "split": ep.split, "engine": meta.get("engine"),
                           "voice": meta.get("voice"), "snr": meta.get("snr"), "missing": pred is None}
    if pred is None or state is None:
        rec.update(success=False if ep.expected_state is not None or ep.answer_facts else None, call_em=False, intent_ok=False, n_invalid=0, n_decoded=0, n_steps=0,
                   tool_error=False, pred_intent=None)
        return rec
    calls = pred.get("calls") or []
    checkable = ep.expected_state is not None or bool(ep.answer_facts)
    rec.update(
        success=bool(success(ep, state, pred.get("answer") or "")) if checkable else None,
        call_em=calls_match(ep, calls),
        intent_ok=bool(ep.intent) and pred.get("intent") == ep.intent,
        pred_intent=pred.get("intent"),
        n_invalid=len(pred.get("invalid_calls") or []),
        n_decoded=len(pred.get("steps") or []),
        n_steps=int(pred.get("n_steps") or 0),
        tool_error=any(not c.get("ok", True) for c in calls),
        answer=pred.get("answer"),
        ended=pred.get("ended"),
    )
    rec["heard"] = heard_errors(ep, pred)
    t = pred.get("timings") or {}
    rec.update(ttft=t.get("ttft"), first_call=t.get("first_call"), total=t.get("total"),
               audio_duration=pred.get("audio_duration"))
    return rec


def heard_errors(ep: Episode, pred: dict) -> list[tuple[int, int]]:
    """(word edits, reference words) of each user turn the agent wrote down as heard, in turn order
    (the loop's ``transcripts``; a turn it never reached has none). Both sides in the spoken word
    form the models read (numbers spelled out, punctuation dropped)."""
    out = []
    for said, heard in zip(ep.turns, pred.get("transcripts") or []):
        ref = spoken_form(said.get("text") or "").split()
        out.append((levenshtein(ref, spoken_form(heard or "").split()), len(ref)))
    return out


def heard_wer(records: list[dict], first_only: bool = False) -> Optional[float]:
    """Corpus word error rate % of what the agents heard (see :func:`heard_errors`)."""
    pairs = [p for r in records for p in (r.get("heard") or [])[: 1 if first_only else None]]
    return pct(sum(e for e, _ in pairs), sum(n for _, n in pairs))


def group_by(records: list[dict], key: str) -> dict[str, list[dict]]:
    """Records by their value of ``key`` (as text; no SNR is ``clean``), in sorted order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        v = r.get(key)
        groups["clean" if key == "snr" and v is None else str(v)].append(r)
    return dict(sorted(groups.items()))


def group_success(records: list[dict], key: str) -> dict[str, dict]:
    return {k: {"n": len(v), "success": success_rate(v)} for k, v in group_by(records, key).items()}


def success_rate(records: list[dict]) -> Optional[float]:
    """Task success % over the records whose success can be checked (see :func:`score_episode`)."""
    checked = [r for r in records if r["success"] is not None]
    return pct(sum(r["success"] for r in checked), len(checked))


def summarize(episodes: list[Episode], preds: dict[str, dict], states: dict[str, dict]) -> tuple[dict, list[dict]]:
    """(summary, per-episode records) of a run."""
    records = [score_episode(ep, preds.get(ep.id), (states.get(ep.id) or {}).get("state")) for ep in episodes]
    n = len(records)
    s: dict[str, Any] = {"n_episodes": n, "n_missing": sum(r["missing"] for r in records)}
    s["n_unchecked"] = sum(r["success"] is None for r in records)
    s["ended"] = dict(sorted(Counter(str(r.get("ended")) for r in records if not r["missing"]).items()))
    s["success"] = success_rate(records)
    for kind in ("atomic", "compositional", "recovery"):
        sub = [r for r in records if r["kind"] == kind]
        s[f"n_{kind}"] = len(sub)
        s[f"success_{kind}"] = success_rate(sub)
    a, c = s["success_atomic"], s["success_compositional"]
    s["gap"] = a - c if a is not None and c is not None else None
    err = [r for r in records if r["tool_error"]]
    s["n_tool_error"] = len(err)
    s["recovery_rate"] = success_rate(err)
    s["call_em"] = pct(sum(r["call_em"] for r in records), n)
    with_intent = [r for r, ep in zip(records, episodes) if ep.intent]
    s["intent_acc"] = pct(sum(r["intent_ok"] for r in with_intent), len(with_intent))
    slu = SLUF1()
    for ep in episodes:
        pred = preds.get(ep.id) or {}
        slu.add([{"type": t, "filler": v} for t, v in ep.slots], pred.get("entities") or [], where=ep.id)
    s.update({k: 100.0 * v for k, v in slu.scores().items() if k in ("slu_f1", "word_f1", "char_f1", "span_f1")})
    decoded = sum(r["n_decoded"] for r in records)
    s["invalid_rate"] = pct(sum(r["n_invalid"] for r in records), decoded)
    s["episodes_with_invalid"] = pct(sum(r["n_invalid"] > 0 for r in records), n)
    s["heard_wer"], s["heard_wer_first"] = heard_wer(records), heard_wer(records, first_only=True)
    s["turns"] = sum(r["n_steps"] for r in records) / n if n else None
    for key in ("ttft", "first_call", "total"):
        vals = [r.get(key) for r in records if r.get(key) is not None]
        s[f"{key}_median"], s[f"{key}_p95"] = percentile(vals, 50), percentile(vals, 95)
    proc = sum(r.get("total") or 0.0 for r in records if r.get("audio_duration"))
    dur = sum(r.get("audio_duration") or 0.0 for r in records)
    s["rtf"] = proc / dur if dur > 0 else None
    by_engine = group_success(records, "engine")
    s["by_engine"] = by_engine
    rates = [v["success"] for k, v in by_engine.items() if k != "None" and v["success"] is not None]
    s["engine_gap"] = max(rates) - min(rates) if len(rates) > 1 else None
    s["heard_wer_by_engine"] = {k: heard_wer(v) for k, v in group_by(records, "engine").items()}
    s["by_voice"] = group_success(records, "voice")
    s["by_split"] = group_success(records, "split")
    s["by_snr"] = group_success(records, "snr")
    s["by_kind"] = group_success(records, "kind")
    return s, records


def plot_snr(path: Path, runs: dict[str, dict], title: str = "") -> bool:
    """Success against SNR, one line per run (``clean`` drawn right of the noisiest-to-cleanest axis)."""
    series = {}
    for name, by_snr in runs.items():
        pts = {}
        for k, v in by_snr.items():
            if v["success"] is None:
                continue
            try:
                x = float(k)
            except ValueError:
                x = math.inf
            pts[x] = v["success"]
        if pts:
            series[name] = pts
    xs = sorted({x for p in series.values() for x in p if math.isfinite(x)})
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean_x = (xs[-1] + 10 if xs else 0.0)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, pts in sorted(series.items()):
        order = sorted(pts)
        ax.plot([clean_x if not math.isfinite(x) else x for x in order], [pts[x] for x in order], marker="o",
                label=name)
    has_clean = any(not math.isfinite(x) for p in series.values() for x in p)
    ax.set_xticks(xs + ([clean_x] if has_clean else []))
    ax.set_xticklabels([f"{t:g}" for t in xs] + (["clean"] if has_clean else []))
    ax.set_xlabel("SNR dB")
    ax.set_ylabel("task success %")
    ax.set_ylim(0, 100)
    ax.set_title(title or "task success vs SNR")
    ax.grid(alpha=0.3)
    ax.legend()
    from speechlm.eval.report import save_figure

    save_figure(fig, path)
    return True


def _fmt_groups(groups: dict[str, dict]) -> str:
    return ", ".join(f"{k}: {v['success']:.1f}% of {v['n']}" if v["success"] is not None else f"{k}: -"
                     for k, v in groups.items())


def _fmt_heard(s: dict) -> str:
    by = ", ".join(f"{k}: {v:.1f}%" for k, v in s["heard_wer_by_engine"].items() if v is not None)
    first = "-" if s["heard_wer_first"] is None else f"{s['heard_wer_first']:.1f}%"
    return f"{by or '-'}; requests only: {first}"


def register_columns() -> None:
    """The agent metric's columns in RESULTS.md tables (speechlm.eval.report renders them)."""
    from speechlm.eval import report

    report.COLUMNS.setdefault("agent", AGENT_COLUMNS)


def score_run(run_dir: str | Path, episodes: list[Episode], name: str, test_set: str, command: str = "",
              data: str = "", results: Optional[str | Path] = None) -> dict:
    """Score ``run_dir``: writes ``scores.json``, ``scored.jsonl``, ``success_vs_snr.png`` there and,
    with ``results``, upserts the run's row (keyed by test set, ``name`` and mode) into RESULTS.md."""
    import datetime
    import os

    from speechlm.eval import report
    from speechlm.utils.fileio import atomic_open, write_json

    run = Path(run_dir)
    pred_path, state_path = run / "predictions.jsonl", run / "final_states.jsonl"
    for p in (pred_path, state_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: run `speechlm agent run --out-dir {run}` first")
    preds, states = read_jsonl(pred_path), read_jsonl(state_path)
    ids = {ep.id for ep in episodes}
    extra = sorted(set(preds) - ids)
    if extra:
        raise ValueError(f"{pred_path}: {len(extra)} prediction(s) for episodes not in the episode file "
                         f"(first: {extra[0]}); score with the episodes the run used")
    summary, records = summarize(episodes, preds, states)
    if summary["n_missing"]:
        log.warning("%s: %d of %d episodes have no prediction (counted as failures); rerun `speechlm agent run` "
                    "to finish them", run, summary["n_missing"], summary["n_episodes"])
    modes = {p.get("mode") for p in preds.values()}
    mode = modes.pop() if len(modes) == 1 else "mixed"
    with atomic_open(run / "scored.jsonl") as f:
        for r in records:
            f.write(json.dumps(report.json_safe(r), ensure_ascii=False) + "\n")
    plots = []
    png = run / "success_vs_snr.png"
    if plot_snr(png, {name: summary["by_snr"]}, title=f"{name} ({mode}), {test_set}"):
        plots.append(png)
    entry = {
        "test_set": test_set, "task": "agent", "model": name, "decode_config": mode, "data": data,
        "command": command, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "n_utts": summary["n_episodes"], "metrics": {"agent": {k: v for k, v in summary.items()
                                                              if not isinstance(v, dict)}},
        "rtf": summary["rtf"],
        "info": {"agent": {
            "episodes": f"{summary['n_atomic']} atomic, {summary['n_compositional']} compositional, "
                        f"{summary['n_recovery']} recovery; {summary['n_tool_error']} with a refused call; "
                        f"{summary['n_missing']} missing; {summary['n_unchecked']} without a success check "
                        f"(no expected state or answer facts: left out of the success rates)",
            "how episodes ended": ", ".join(f"{k} {v}" for k, v in summary["ended"].items()),
            "success by engine": _fmt_groups(summary["by_engine"]),
            "heard WER by engine (all user turns / requests only)": _fmt_heard(summary),
            "success by SNR": _fmt_groups(summary["by_snr"]),
            "success by split": _fmt_groups(summary["by_split"]),
        }},
    }
    write_json(run / "scores.json", report.json_safe({**entry, "summary": summary}))
    if results:
        register_columns()
        base = Path(results).resolve().parent
        entry["per_utt"] = os.path.relpath((run / "scored.jsonl").resolve(), base)
        entry["plots"] = [os.path.relpath(p.resolve(), base) for p in plots]
        entries = report.update_results(results, entry)
        snr_runs = {f"{e['model']} ({e['decode_config']})": e["snr"] for e in _snr_of(entries, test_set, base)}
        plot_snr(Path(results).with_name(f"success_vs_snr_{report.slug(test_set)}.png"), snr_runs,
                 title=f"task success vs SNR, {test_set}")
    return summary


def _snr_of(entries: Iterable[dict], test_set: str, base: Path) -> list[dict]:
    """The by-SNR success of every agent row of ``test_set`` (read back from each run's scores.json)."""
    out = []
    for e in entries:
        if e.get("task") != "agent" or e.get("test_set") != test_set or not e.get("per_utt"):
            continue
        scores = (base / e["per_utt"]).parent / "scores.json"
        if scores.is_file():
            data = json.loads(scores.read_text(encoding="utf-8"))
            out.append({"model": e["model"], "decode_config": e.get("decode_config"),
                        "snr": data.get("summary", {}).get("by_snr", {})})
    return out


def format_summary(name: str, s: dict) -> str:
    """A few lines for the terminal."""
    def f(k: str, d: int = 1) -> str:
        v = s.get(k)
        return "-" if v is None else f"{v:.{d}f}"

    return (f"{name}: {s['n_episodes']} episodes | success {f('success')}% (atomic {f('success_atomic')}, "
            f"compositional {f('success_compositional')}, gap {f('gap')} pts, recovery episodes "
            f"{f('success_recovery')}; recovery rate {f('recovery_rate')}%) | call EM {f('call_em')}% | intent "
            f"{f('intent_acc')}% | SLU-F1 {f('slu_f1')}% | heard WER {f('heard_wer')}% | invalid "
            f"{f('invalid_rate')}% | turns {f('turns', 2)} | "
            f"total {f('total_median', 3)} s median, {f('total_p95', 3)} s p95 | RTF {f('rtf', 3)}")


__all__ = ["score_run", "summarize", "score_episode", "call_key", "plot_snr", "format_summary", "AGENT_COLUMNS"]
