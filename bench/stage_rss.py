"""Peak RSS of a recipe's stages, read from the job logs a run left (``make demo``'s by default).

    python bench/stage_rss.py [--recipe-dir egs/mini_espeak/speechlm1] [--json FILE]

Every job that ``speechlm.sh`` starts through ``utils/run.pl`` (tokenization shards, training,
decoding shards, and the recipe's own data jobs) ends its log with
``# Accounting: time=S threads=T peak_rss_mb=M``: M is the largest resident set of any process
of the job. This script measures nothing itself; it collects those lines, per stage: the number
of jobs, the largest peak of one job and the wall time of the longest job. Stages that run in the
shell itself (BPE, vocabulary, scoring) have no job log and are not listed. Run ``make demo``
first; a recipe dir without logs gives an empty table and says so.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTING = re.compile(r"^# Accounting: time=(\d+) .*peak_rss_mb=(\d+)", re.M)

#: (stage label, glob under the recipe dir) in stage order.
STAGES = [
    ("1 data (synthesis jobs)", "data/local/*/log/*.log"),
    ("5 tokenization", "dump/**/tokens/log/*.log"),
    ("8 training", "exp/*/logs/train.log"),
    ("10 decoding", "exp/*/decode_*/logs/decode.*.log"),
]


def collect(recipe_dir: Path) -> list[dict]:
    """One row per stage with at least one job log that carries a peak."""
    rows = []
    for label, pattern in STAGES:
        peaks, times = [], []
        for log in sorted(recipe_dir.glob(pattern)):
            m = ACCOUNTING.findall(log.read_text(errors="replace"))
            if m:
                t, rss = m[-1]
                times.append(int(t))
                peaks.append(int(rss))
        if peaks:
            rows.append({"stage": label, "jobs": len(peaks), "peak_rss_mb": max(peaks),
                         "longest_job_s": max(times)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe-dir", default=str(ROOT / "egs" / "mini_espeak" / "speechlm1"))
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    rows = collect(Path(a.recipe_dir))
    print(f"Peak RSS of the stages of {a.recipe_dir} (from its job logs)\n")
    if rows:
        print("| stage | jobs | peak RSS of one job MB | longest job s |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['stage']} | {r['jobs']} | {r['peak_rss_mb']:,} | {r['longest_job_s']} |")
    else:
        print("No job log with a peak RSS: run `make demo` (or the recipe) first.")
    if a.json:
        Path(a.json).write_text(json.dumps({"recipe_dir": a.recipe_dir, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
