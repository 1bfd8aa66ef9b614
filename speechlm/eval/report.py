"""Score reports: RESULTS.md tables, per-utterance JSONL, per-utterance histograms.

``RESULTS.md`` is rendered from a JSON store beside it (``RESULTS.json``): each ``speechlm
score`` run upserts one entry keyed by (test set, task, model, decode config) and the tables
are re-rendered, one table per test set and task. Text outside the generated block (between
the ``BEGIN``/``END`` markers) is kept, so notes written by hand survive updates. Every file
is written atomically.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

from speechlm.eval.base import MetricResult
from speechlm.utils.fileio import atomic_open, write_json, write_text

logger = logging.getLogger(__name__)

BEGIN = "<!-- BEGIN speechlm score (generated from {store}; edit outside this block) -->"
END = "<!-- END speechlm score -->"

# metric -> [(summary key, column header, decimals)]
COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "wer": [("wer", "WER %", 2)],
    "cer": [("cer", "CER %", 2)],
    "bleu": [("bleu", "BLEU", 2)],
    "chrf": [("chrf", "chrF", 2)],
    "intelligibility": [("wer", "ASR-WER %", 2), ("cer", "ASR-CER %", 2)],
    "spk_sim": [("spk_sim", "SPK-SIM", 3)],
    "duration": [("stopped_pct", "stopped %", 1), ("in_range_pct", "dur 0.7-1.4x %", 1),
                 ("ratio_median", "dur ratio", 2), ("speech_in_range_pct", "speech span 0.7-1.4x %", 1),
                 ("speech_ratio_median", "span ratio", 2)],
    "dnsmos": [("ovrl", "DNSMOS OVRL", 2), ("sig", "SIG", 2), ("bak", "BAK", 2)],
    "mos": [("mos", "MOS (local model)", 2)],
    "stoi": [("stoi", "STOI", 3)],
    "pesq": [("pesq", "PESQ", 2)],
    "mcd": [("mcd", "MCD dB", 2)],
    "si_snr": [("si_snr", "SI-SNR dB", 2)],
}


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has neither) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return json_safe(obj.item())
    return obj


def slug(*parts: str) -> str:
    """A file-name-safe identifier from the given parts."""
    s = "_".join(p for p in parts if p)
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-") or "score"
    if len(s) > 120:  # file-name limits: keep a readable head and a hash of the whole
        import hashlib

        s = f"{s[:100]}-{hashlib.sha1(s.encode()).hexdigest()[:10]}"
    return s


def write_per_utt(path: str | Path, results: dict[str, MetricResult]) -> None:
    """One JSON line per utterance: ``{"id": utt, "<metric>": {fields}, ...}``, sorted by id."""
    ids = sorted({u for r in results.values() for u in r.per_utt})
    with atomic_open(path) as f:
        for utt in ids:
            rec: dict[str, Any] = {"id": utt}
            for name, res in results.items():
                if utt in res.per_utt:
                    rec[name] = res.per_utt[utt]
            f.write(json.dumps(json_safe(rec), ensure_ascii=False) + "\n")


def plot_histogram(path: str | Path, res: MetricResult, label: str = "") -> bool:
    """PNG histogram of a metric's per-utterance ``key`` values; False when there is nothing to plot."""
    values = [float(r[res.key]) for r in res.per_utt.values()
              if isinstance(r.get(res.key), (int, float)) and math.isfinite(r[res.key])]
    if not values:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    headline = res.summary.get(res.key, float("nan"))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#4472c4", edgecolor="white")
    ax.axvline(headline, color="#c00000", linestyle="--", label=f"corpus {res.key} = {headline:.2f}")
    ax.set_xlabel(f"per-utterance {res.key}{' %' if res.key in ('wer', 'cer') else ''}")
    ax.set_ylabel("utterances")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{res.name}{f' ({label})' if label else ''}: {len(values)} utterances")
    ax.legend()
    save_figure(fig, path)
    return True


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def entry_key(entry: dict[str, Any]) -> tuple:
    return (entry["test_set"], entry["task"], entry["model"], entry.get("decode_config", "-"))


def load_store(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a results store (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to start a new results table") from e
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: expected {{'entries': [...]}}")
    return data["entries"]


def _fmt(value: Any, decimals: int) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.{decimals}f}"
    return "-"


def _columns(entries: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(metric or floor id, summary key, header, decimals) for the metrics the entries hold."""
    cols: list[tuple[str, str, str, int]] = []
    seen = set()
    for e in entries:
        for metric in e["metrics"]:
            for key, header, dec in COLUMNS.get(metric, [(next(iter(e["metrics"][metric]), ""), metric, 3)]):
                if (metric, key) not in seen:
                    seen.add((metric, key))
                    cols.append((metric, key, header, dec))
            if metric == "intelligibility":
                for label in e.get("floor", {}):
                    if ("floor:" + label, "wer") not in seen:
                        seen.add(("floor:" + label, "wer"))
                        cols.append(("floor:" + label, "wer", f"ASR-WER % ({label})", 2))
    return cols


def _value(entry: dict[str, Any], metric: str, key: str) -> Any:
    if metric.startswith("floor:"):
        return entry.get("floor", {}).get(metric[6:], {}).get(key)
    return entry["metrics"].get(metric, {}).get(key)


def render_section(entries: list[dict[str, Any]]) -> str:
    """Markdown for one (test set, task): a table, the data, commands and worst utterances."""
    first = entries[0]
    cols = _columns(entries)
    has_rtf = any(e.get("rtf") is not None for e in entries)
    head = ["model", "utts"] + [c[2] for c in cols] + (["RTF"] if has_rtf else []) + ["decode config"]
    lines = [f"## {first['test_set']} / {first['task']}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i in (0, len(head) - 1) else "---:" for i in range(len(head))) + "|"]
    for e in entries:
        row = [e["model"], str(e.get("n_utts", "-"))] + [_fmt(_value(e, m, k), d) for m, k, _, d in cols]
        if has_rtf:
            row.append(_fmt(e.get("rtf"), 3))
        row.append(e.get("decode_config", "-"))
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    lines += ["", f"- data: `{first['data']}`"]
    for e in entries:
        lines.append(f"- `{e['model']}` ({e.get('decode_config', '-')}), scored {e.get('date', '')}: "
                     f"`{e['command']}`")
        for metric, info in sorted(e.get("info", {}).items()):
            if info:
                lines.append(f"  - {metric}: " + ", ".join(f"{k}: {v}" for k, v in info.items()))
        if e.get("per_utt"):
            lines.append(f"  - per utterance: [{e['per_utt']}]({e['per_utt']})"
                         + "".join(f", [{Path(p).name}]({p})" for p in e.get("plots", [])))
        if e.get("worst") and e["worst"].get("rows"):
            w = e["worst"]
            by = w["metric"] if w["metric"] == w["key"] else f"{w['metric']} {w['key']}"
            lines.append(f"  - worst utterances by {by}:")
            for row in w["rows"]:
                val = _fmt(row.get("value"), 2) if row.get("value") is not None else "inf"
                detail = f" ref: \"{row['ref']}\" hyp: \"{row['hyp']}\"" if "ref" in row else ""
                lines.append(f"    - `{row['id']}` {val}{detail}")
    return "\n".join(lines) + "\n"


def render(entries: list[dict[str, Any]]) -> str:
    """All sections, ordered by test set then task; rows in the order they were first added."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["test_set"], e["task"]), []).append(e)
    return "\n".join(render_section(groups[k]) for k in sorted(groups))


def update_results(results_md: str | Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Upsert ``entry`` into the store beside ``results_md`` and re-render RESULTS.md.

    Returns all entries. An entry with the same (test set, task, model, decode config)
    replaces the old one in place; others are appended.
    """
    md = Path(results_md)
    store = md.with_suffix(".json")
    entries = load_store(store)
    entry = json_safe(entry)
    for i, old in enumerate(entries):
        if entry_key(old) == entry_key(entry):
            entries[i] = entry
            break
    else:
        entries.append(entry)
    write_json(store, {"entries": entries})
    begin = BEGIN.format(store=store.name)
    block = f"{begin}\n\n{render(entries)}\n{END}\n"
    if md.exists():
        text = md.read_text(encoding="utf-8")
        i = text.find("<!-- BEGIN speechlm score")
        j = text.find(END)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(END):].lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Results\n\n" + block
    write_text(md, text)
    logger.info("updated %s (%d entries)", md, len(entries))
    return entries
