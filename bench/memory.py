"""Peak resident memory (RSS) of the mini recipe's training process, and of its process tree.

    python bench/memory.py [--num-utts 300] [--steps 40] [--recipe-dir DIR] [--json FILE]

Builds a small mini_espeak corpus (``local/data.sh --num_utts N``, then the recipe's stages 2-7:
tokenization) in a temporary copy of the recipe, or uses ``--recipe-dir`` (a recipe dir whose
stages 1-7 ran with ``--tasks "asr tts"``), then runs ``speechlm train`` with the recipe's configs of
its ASR + speaker-prompted TTS over 138 voices (conf/model.yaml, conf/train.yaml; the recipe's
default until 2026-12-07) for ``--steps`` steps in each setting below and
reports:

* main peak: the training process's VmHWM (polled, and as its log states at the end);
* tree peak: the largest sum of VmRSS over the process and its DataLoader workers (polled every
  50 ms; forked workers share the parent's pages, which RSS counts in each of them);
* tree PSS peak: the same with proportional set sizes (shared pages split among the sharers).

RSS is not disturbed by other load on the machine; the step count matters (the heap grows with
new batch shapes: 1.19 GB after 60 steps, 1.25 GB after 300 on the full corpus before the fixes
of speechlm/train/memory.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "egs" / "mini_espeak" / "speechlm1"
SETTINGS = [  # (name, threads, DataLoader workers)
    ("1 thread, no workers", 1, 0),
    ("2 threads, no workers (the recipe)", 2, 0),
    ("1 thread, 2 workers", 1, 2),
]


def recipe_copy(dst: Path) -> Path:
    """The mini recipe in ``dst``: its files linked, its outputs local (as the tests make it)."""
    dst.mkdir(parents=True)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils", "local", "conf", "run.sh"):
        (dst / name).symlink_to(MINI / name)
    return dst


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    return kids


def _kb(pid: int, file: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{file}") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), 0)
    except OSError:
        return 0


def measure(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run ``cmd``; its peak RSS (MB), its tree's peak RSS and PSS sums, wall seconds, exit code."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tree_rss = tree_pss = n_max = main_rss = 0
    while proc.poll() is None:
        kids, todo, pids = _children(), [proc.pid], []
        while todo:
            q = todo.pop()
            pids.append(q)
            todo += kids.get(q, [])
        main_rss = max(main_rss, _kb(proc.pid, "status", "VmHWM:"))
        tree_rss = max(tree_rss, sum(_kb(p, "status", "VmRSS:") for p in pids))
        tree_pss = max(tree_pss, sum(_kb(p, "smaps_rollup", "Pss:") for p in pids))
        n_max = max(n_max, len(pids))
        time.sleep(0.05)
    err = proc.stderr.read()
    main_mb = main_rss / 1024  # polled; the trainer's own last word (its VmHWM at the end) wins
    peak_line = next((ln for ln in err.splitlines() if "peak RSS" in ln), "")
    if peak_line:
        main_mb = max(main_mb, float(peak_line.rsplit("peak RSS", 1)[1].split()[0]))
    return {"main_peak_mb": round(main_mb), "tree_peak_mb": round(tree_rss / 1024),
            "tree_pss_peak_mb": round(tree_pss / 1024), "processes": n_max, "wall_s": round(time.time() - t0, 1),
            "rc": proc.returncode, "error": err[-2000:] if proc.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-utts", type=int, default=300, help="corpus size to synthesize (without --recipe-dir)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--recipe-dir", type=Path, help="a mini_espeak recipe dir whose stages 1-7 ran with --tasks \"asr tts\"")
    p.add_argument("--settings", default="0,1,2", help="which rows (indices into the settings list)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        if args.recipe_dir:
            recipe = args.recipe_dir.resolve()
        else:
            recipe = recipe_copy(tmp / "mini_espeak" / "speechlm1")
            t = time.time()
            # the speaker-prompted TTS over the 138 voices (the recipe's TTS until 2026-12-07): the
            # numbers in docs/PERFORMANCE.md were measured with it
            subprocess.run(["./run.sh", "--stop_stage", "7", "--local_data_opts",
                            f"--num_utts {args.num_utts} --nj 2 --seed 1", "--tasks", "asr tts",
                            "--task_weights", "asr:2 tts:1", "--task_set_suffix", "",
                            "--tokenizers", "conf/tokenizers.yaml"], cwd=recipe, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"corpus: {args.num_utts} utterances synthesized and tokenized in {time.time() - t:.0f} s")
        name = recipe.parent.name
        data = [f"--data=asr:{name}:dump/train/asr:2", f"--data=tts:{name}:dump/train/tts:1",
                f"--valid-data=asr:{name}:dump/dev/asr:2", f"--valid-data=tts:{name}:dump/dev/tts:1"]
        rows = []
        for k in (int(x) for x in args.settings.split(",")):
            label, threads, workers = SETTINGS[k]
            out = tmp / f"exp{k}"
            cmd = [sys.executable, "-m", "speechlm", "train", *data, "--vocab", "dump/token_list.json",
                   "--tokenizers", "conf/tokenizers.yaml", "--train-config", "conf/train.yaml",
                   "--model-config", "conf/model.yaml", "--out-dir", str(out), "--max-steps", str(args.steps),
                   "--threads", str(threads), "--num-workers", str(workers), "--set", "progress_bar=false",
                   "--valid-every", str(args.steps)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            r = measure(cmd, recipe, env)
            rows.append({"setting": label, "threads": threads, "num_workers": workers, "steps": args.steps, **r})
            if r["rc"]:
                print(f"{label}: training failed (rc {r['rc']}):\n{r['error']}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmini recipe training (conf/model.yaml, conf/train.yaml), {args.steps} steps incl. one validation "
          f"and one checkpoint; target: peak < 1024 MB")
    print(f"{'setting':<38} {'main MB':>8} {'tree RSS MB':>12} {'tree PSS MB':>12} {'procs':>6} {'wall s':>7}")
    for r in rows:
        print(f"{r['setting']:<38} {r['main_peak_mb']:>8} {r['tree_peak_mb']:>12} {r['tree_pss_peak_mb']:>12} "
              f"{r['processes']:>6} {r['wall_s']:>7}")
    if args.json:
        args.json.write_text(json.dumps({"bench": "memory", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
