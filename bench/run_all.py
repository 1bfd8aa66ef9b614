"""Run every benchmark and write the performance report (``make bench``).

    python bench/run_all.py [--quick] [--threads 2] [--out docs/PERFORMANCE.md] [--only NAME ...]
    python bench/run_all.py --from-json docs/performance.json      # rewrite the report from recorded rows

Each benchmark script runs in its own process (``OMP_NUM_THREADS`` = ``--threads``), one after
the other, so that none disturbs another's timings; its wall time, exit status and peak RSS (the
``ru_maxrss`` that ``wait4`` reports for the process: the largest resident set of it and of the
children it waited for) are recorded. A script that takes ``--json FILE`` returns its rows there;
for the others the markdown tables it prints are kept. The peer (ESPnet-SpeechLM as released on
PyPI) runs in its own virtual env, made once by ``bench/peer/venv.sh`` and cached outside the tree;
if it cannot be made the report says why and the rest is written anyway. Our multiscale rows and
the peer's then run again, alternately (``--pair-rounds``, default 2), and each row keeps its
fastest round: on a shared machine one same-run ratio moved by +-20% between runs.

Writes ``--out`` (markdown: machine, versions, configurations, tables, ratios against the
baselines measured in the same run) and, next to it, ``performance.json`` (every recorded row:
``--from-json`` rewrites the report from it). The default run takes under 20 minutes on a 2-core
machine once the peer's env exists (its first install downloads ~3 GB); ``--quick`` under 5.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


@dataclass
class Bench:
    """One benchmark script: its arguments for the full and the quick run."""

    name: str
    script: str
    title: str
    full: list[str]
    quick: list[str]
    json: bool = True  # takes --json FILE
    timeout: int = 900
    python: str | None = None  # another interpreter (the peer's env)
    probe: bool = False  # another helper's script: pass only the options its --help lists


def supported(cmd: list[str], argv: list[str], env: dict) -> tuple[list[str], bool]:
    """``argv`` without the options that ``cmd --help`` does not list (with their values), and
    whether it takes ``--json``."""
    h = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120).stdout
    known = lambda opt: re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", h) is not None  # noqa: E731
    out, keep = [], True
    for a in argv:
        if a.startswith("--"):
            keep = known(a)
        if keep:
            out.append(a)
    return out, known("--json")


def benches(threads: int) -> list[Bench]:
    """The report's benchmarks in run order (a script that does not exist is left out)."""
    t = ["--threads", str(threads)]
    return [
        Bench("tokenize", "tokenize_speed.py", "Audio tokenization speed",
              ["--n-utts", "30", "--n-quality", "6", "--asr", "none", "--stage-repeat", "2"],
              ["--n-utts", "8", "--n-quality", "2", "--asr", "none", "--no-stage"], json=False),
        Bench("model", "model.py", "Training step: SpeechLM vs bare backbone vs text LM",
              [*t, "--steps", "3", "--strategies", "parallel", "delay", "multiscale", "ar_nar"],
              [*t, "--steps", "1", "--frames", "40", "--strategies", "delay", "multiscale"],
              json=False),
        Bench("batching", "batching.py", "Data loading and padding: bucketed vs random batches",
              ["--batches", "300"], ["--batches", "40", "--pool-size", "500"]),
        Bench("index_memory", "train_index_memory.py", "Data loading: indexing a large manifest (memory)",
              ["--n", "200000"], ["--n", "20000"]),
        Bench("train_speed", "train_speed.py", "Training through the Trainer (data loading included)",
              ["--model-config", "tiny", "--steps", "6", "--threads", str(threads), "--freeze-layers", "0", "1"],
              ["--model-config", "tiny", "--steps", "2", "--threads", str(threads)]),
        Bench("decode", "decode.py", "Decoding: KV cache, batch scaling, ours vs transformers",
              [*t, "--steps", "40", "--long-steps", "150", "--rounds", "2", "--strategies", "delay", "multiscale",
               "--kv-strategies", "delay", "multiscale"],
              [*t, "--steps", "10", "--long-steps", "20", "--rounds", "1", "--tables", "kv", "hf",
               "--kv-strategies", "delay", "multiscale"], json=False),
        Bench("stream", "stream.py", "Streaming TTS: first chunk and real-time factor",
              [*t, "--rounds", "2", "--strategies", "delay", "multiscale"],
              [*t, "--rounds", "1", "--strategies", "delay", "--frames", "40", "--chunk-frames", "8"], json=False),
        Bench("serve", "serve.py", "Serving: batching scheduler vs one request at a time",
              [*t, "--seconds", "6"], [*t, "--seconds", "2", "--clients", "1", "4", "--mode", "inproc"], json=False),
        Bench("memory", "memory.py", "Memory: peak RSS of training", [], ["--quick"], probe=True),
        Bench("demo_rss", "stage_rss.py", "Memory: peak RSS of `make demo`'s stages (from its job logs)", [], [], json=False),
        Bench("mfu", "mfu.py", "The CPU's limit: matmul peak and MFU", [*t], [*t, "--quick"]),
        Bench("scaling", "scaling.py", "Scaling curves", [*t], [*t, "--quick"]),
        Bench("multiscale", "multiscale.py", "Our strategies at ESPnet-SpeechLM's shapes", [*t, "--profile"],
              [*t, "--steps", "1", "--rounds", "1", "--batch", "2", "--decode-frames", "20"], probe=True),
        Bench("peer", "peer/espnet_lm.py", "ESPnet-SpeechLM 202506 (peer env)", [*t],
              [*t, "--steps", "1", "--rounds", "1", "--B", "2", "--gen-frames", "20"]),
    ]


@dataclass
class Result:
    name: str
    title: str
    cmd: list[str]
    rc: int | None = None
    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    load_before: float | None = None
    data: dict | None = None
    tables: list[str] = field(default_factory=list)
    output: str = ""  # the end of what it printed (shown when it printed no table)
    error: str = ""


def run_child(cmd: list[str], env: dict, timeout: int, log: Path) -> tuple[int, float, float, str]:
    """Run ``cmd`` to completion: (exit status, wall s, peak RSS MB of the process, its output)."""
    with open(log, "w") as out:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)  # wait4: this child's own rusage (its peak RSS)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
    return p.returncode, wall, ru.ru_maxrss / 1024, log.read_text(errors="replace")


def markdown_tables(text: str) -> list[str]:
    """The markdown tables (and their ``###`` headings) a script printed, one string each."""
    blocks, cur, heading = [], [], ""
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line.rstrip())
            continue
        if cur:
            blocks.append((heading + "\n\n" if heading else "") + "\n".join(cur))
            cur, heading = [], ""
        if line.startswith("#"):
            heading = "#### " + line.lstrip("#").strip()
    if cur:
        blocks.append((heading + "\n\n" if heading else "") + "\n".join(cur))
    return [b for b in blocks if b.count("\n") >= 2 or "|---" in b]


# --- machine and versions ---------------------------------------------------------------------


def machine_info(threads: int) -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem = None
    try:
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        mem = kb / 1024 / 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "mem_gib": mem, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "threads": threads, "os": platform.platform(),
            "load_start": os.getloadavg()[0]}


def versions(python: str) -> dict:
    out = {"python": platform.python_version()}
    q = subprocess.run([python, "-c", "import torch, numpy; print(torch.__version__, numpy.__version__)"],
                       capture_output=True, text=True)
    if q.returncode == 0:
        out["torch"], out["numpy"] = q.stdout.split()
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        h = subprocess.run([git, "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        changed = [ln[3:] for ln in dirty.stdout.splitlines() if ln.strip()]
        out["speechlm_git"] = h.stdout.strip() + (f" (with uncommitted changes to {', '.join(changed)})" if changed else "")
    return out


# --- running ------------------------------------------------------------------------------------


def peer_python(quick: bool, allow_install: bool) -> tuple[str | None, str]:
    """The peer env's python (made now if it is missing and ``allow_install``), or None and why."""
    venv = Path(os.environ.get("SPEECHLM_PEER_VENV", Path.home() / ".cache/speechlm-bench/peer-venv"))
    if not allow_install and not (venv / "bin/python").exists():
        return None, f"the peer env {venv} does not exist and this run does not install it (--peer-install)"
    t = time.perf_counter()
    p = subprocess.run(["bash", str(BENCH / "peer/venv.sh")], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return None, "bench/peer/venv.sh failed: " + " ".join(p.stderr.strip().splitlines()[-3:])
    took = time.perf_counter() - t
    return p.stdout.strip().splitlines()[-1], (f"peer env made in {took:.0f} s" if took > 30 else "peer env cached")


def run_all(args) -> dict:
    py = sys.executable
    report: dict = {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "quick": args.quick, "only": args.only, "machine": machine_info(args.threads), "versions": versions(py),
                    "results": []}
    todo = [b for b in benches(args.threads) if (BENCH / b.script).exists() and (not args.only or b.name in args.only)]
    peer = next((b for b in todo if b.name == "peer"), None)
    if peer is not None:
        peer.python, why = peer_python(args.quick, args.peer_install or not args.quick)
        report["peer_env"] = why
        if peer.python:
            q = subprocess.run([peer.python, "-c", "import torch, espnet; print(torch.__version__, espnet.__version__)"],
                               capture_output=True, text=True)
            if q.returncode == 0:
                tv, ev = q.stdout.split()
                report["versions"]["peer"] = f"torch {tv}, espnet {ev}"
    if not any(b.name == "multiscale" for b in todo) and peer is not None and (not args.only or "peer" in args.only):
        # our side of the peer table when bench/multiscale.py is absent
        todo.insert(todo.index(peer), Bench("peer_ours", "peer/ours_lm.py", "Our strategies at ESPnet-SpeechLM's shapes",
                                            ["--threads", str(args.threads)],
                                            ["--threads", str(args.threads), "--steps", "1", "--rounds", "1", "--B", "2",
                                             "--gen-frames", "20"]))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="speechlm-bench-"))
    t0 = time.perf_counter()

    def run_one(b: Bench, tag: str = "") -> Result:
        argv = list(b.quick if args.quick else b.full)
        if b.name == "scaling":
            argv += ["--out-dir", str(Path(args.out).parent)]
        res = Result(b.name, b.title, [])
        if b.name == "peer" and not b.python:
            res.error = report.get("peer_env", "no peer env")
            print(f"[bench] {b.name}: skipped: {res.error}", flush=True)
            return res
        jpath = work / f"{b.name}{tag}.json"
        takes_json = b.json
        if b.probe:
            argv, takes_json = supported([b.python or py, str(BENCH / b.script)], argv, env)
        cmd = [b.python or py, str(BENCH / b.script), *argv, *(["--json", str(jpath)] if takes_json else [])]
        res.cmd = [Path(cmd[0]).name if b.python is None else "PEER/bin/python", *[
            os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd[1:]]]
        res.cmd = [c if not c.startswith(str(work)) else Path(c).name.replace(tag, "") for c in res.cmd]
        res.load_before = os.getloadavg()[0]
        print(f"[bench] {b.name}{tag}: {' '.join(res.cmd)}", flush=True)
        res.rc, res.wall_s, res.peak_rss_mb, text = run_child(cmd, env, b.timeout, work / f"{b.name}{tag}.log")
        res.tables = markdown_tables(text)
        res.output = "\n".join(text.rstrip().splitlines()[-30:])
        if takes_json and jpath.exists():
            res.data = json.loads(jpath.read_text())
        if res.rc != 0:
            res.error = "\n".join(text.strip().splitlines()[-8:])
        print(f"[bench] {b.name}{tag}: rc={res.rc} {res.wall_s:.0f} s peak RSS {res.peak_rss_mb:.0f} MB", flush=True)
        return res

    for b in todo:
        report["results"].append(run_one(b).__dict__)
    # Ours and the peer again, alternately: one same-run ratio moves by +-20% on a shared machine
    pair = [b for b in todo if b.name in ("multiscale", "peer")]
    done = {r["name"]: r for r in report["results"]}
    if len(pair) == 2 and all(done[b.name]["rc"] == 0 and done[b.name].get("data") for b in pair):
        for i in range(2, (1 if args.quick else args.pair_rounds) + 1):
            for b in pair:
                again = run_one(b, tag=f"_round{i}")
                if again.rc == 0 and again.data:
                    merge_best_rows(done[b.name], again)
    report["total_s"] = time.perf_counter() - t0
    report["machine"]["load_end"] = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    return report


def merge_best_rows(first: dict, again: "Result") -> None:
    """Fold another round of a benchmark into its recorded result: per row (same implementation,
    model, measure and rows) the faster frames/s is kept and every round's is listed
    (``frames_per_s_rounds``)."""
    def key(x: dict) -> tuple:
        return (x.get("impl"), x.get("model"), x.get("what"), x.get("rows"))

    other = {key(x): x for x in again.data.get("rows", [])}
    for x in first["data"].get("rows", []):
        y = other.get(key(x))
        if y is None:
            continue
        x.setdefault("frames_per_s_rounds", [x["frames_per_s"]]).append(y["frames_per_s"])
        if y["frames_per_s"] > x["frames_per_s"]:
            x.update({k: v for k, v in y.items() if k != "frames_per_s_rounds"})
    first["wall_s"] += again.wall_s
    first["peak_rss_mb"] = max(first["peak_rss_mb"] or 0, again.peak_rss_mb or 0)


# --- the report -----------------------------------------------------------------------------------


# tests/test_docs.py runs the fenced blocks of docs/*.md unless marked: these are program output
SKIP_MARK = "<!-- doc-test: skip (benchmark output, not a command) -->"


def fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def result(report: dict, name: str) -> dict | None:
    return next((r for r in report["results"] if r["name"] == name), None)


def peer_rows(report: dict) -> tuple[list[dict], list[dict]]:
    """(ESPnet rows, our rows) normalised to impl/model/what/rows/frames_per_s/params_m."""
    theirs, ours = [], []
    r = result(report, "peer")
    if r and r.get("data"):
        theirs = r["data"]["rows"]
    m = result(report, "multiscale")
    if m and m.get("data"):
        for x in m["data"]["rows"]:
            ours.append({"impl": "speechlm", "model": x["strategy"], "rows": x["rows"], "frames_per_s": x["frames_per_s"],
                         "what": "train" if x["measure"] == "train" else "decode",
                         "params_m": x["params"] / 1e6 if x.get("params") else None,
                         "frames_per_s_rounds": x.get("frames_per_s_rounds")})
    o = result(report, "peer_ours")
    if not ours and o and o.get("data"):
        ours = o["data"]["rows"]
    return theirs, ours


def peer_section(report: dict) -> tuple[list[str], dict]:
    """The side-by-side table and the headline ratios (ours / ESPnet frames/s)."""
    theirs, ours = peer_rows(report)
    lines = ["## ESPnet-SpeechLM, side by side", ""]
    r = result(report, "peer") or {}
    heads: dict = {}
    if not theirs:
        why = r.get("error") or report.get("peer_env") or "the peer benchmark did not run"
        lines += [f"The peer rows are missing: {why}", ""]
    else:
        info = r["data"].get("info", {})
        lines += [f"ESPnet {info.get('espnet', '?')} (torch {info.get('torch', '?')}, its own virtual env) and "
                  f"speechlm in the same run, {report['machine']['threads']} threads, fp32. Shapes: attention dim 256, "
                  "4 heads, 6 global + 2 local layers (multiscale), 8 codebooks (ESPnet: one 2048-entry vocabulary; "
                  "ours: 8 x 256), training batch 8 x 256 frames (forward + backward + AdamW), greedy decoding of 100 "
                  "frames after a 50-frame prompt for 1 and 8 rows. Medians of repeated runs; with more than one "
                  "round (`--pair-rounds`), ours and the peer ran alternately and each row keeps its fastest round "
                  "(every round's frames/s in the last column).", ""]
        if "valle" in info:
            lines += [f"ESPnet's `ValleLM` (AR + NAR): {info['valle']}.", ""]
    if theirs or ours:
        base = {(x["what"], x["rows"]): x["frames_per_s"] for x in theirs}
        lines += ["| implementation | model | measure | rows | params | frames/s | vs ESPnet MultiScaleLM | rounds |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in theirs + ours:
            b = base.get((x["what"], x["rows"]))
            ratio = x["frames_per_s"] / b if b else None
            if x["impl"] == "speechlm" and x["model"] == "multiscale" and ratio:
                heads[f"{x['what']} {x['rows']} row(s)"] = ratio
            p = x.get("params_m")
            lines.append(f"| {x['impl']} | {x['model']} | {x['what']} | {x['rows']} | "
                         f"{fmt(p, '.1f') + 'M' if p else '-'} | {fmt(x['frames_per_s'])} | "
                         f"{fmt(ratio, '.2f') + 'x' if ratio else '-'} | "
                         f"{' / '.join(fmt(v) for v in x.get('frames_per_s_rounds') or []) or '-'} |")
        lines += ["", "Targets: multiscale trains >= 1.5x and decodes >= 2x ESPnet's frames/s (1 and 8 rows).", ""]
    return lines, heads


def mfu_section(report: dict) -> tuple[list[str], dict]:
    r = result(report, "mfu")
    lines = ["## The CPU's limit: matmul peak and model FLOPs utilization", ""]
    heads: dict = {}
    if not r or not r.get("data"):
        return lines + [f"Not measured: {(r or {}).get('error') or 'bench/mfu.py did not run'}", ""], heads
    d = r["data"]
    m = report["machine"]
    lines += [f"Square matmuls at {d['info']['threads']} threads (GFLOP/s, median of repeated calls; the peak is the "
              f"best size). bf16 is measured only where the CPU has native bf16 (avx512_bf16 "
              f"{'yes' if m.get('avx512_bf16') else 'no'}, AMX {'yes' if m.get('amx_bf16') else 'no'} here).", ""]
    sizes = list(d["peak"][0]["gflops"]) if d["peak"] else []
    lines += ["| precision | " + " | ".join(f"n={n}" for n in sizes) + " | peak |", "|---|" + "---|" * (len(sizes) + 1)]
    for p in d["peak"]:
        lines.append(f"| {p['precision']} | " + " | ".join(fmt(v) for v in p["gflops"].values()) + f" | {fmt(p['peak'])} |")
        heads[f"matmul peak {p['precision']}"] = p["peak"]
    i = d["info"]
    lines += ["", f"Full training step (embedding, backbone, strategy head, loss, backward, fused AdamW) on a TTS-shaped "
              f"batch: {i['batch']} rows of {i['phones']} phones -> {i['frames']} frames x {i['streams']} codebooks of "
              "1024. Useful FLOPs are analytic: 6 x non-embedding matrix parameters x positions + causal attention + "
              "the output heads (and multiscale's local transformer) on the positions that carry a loss; MFU = useful "
              "GFLOP/s / matmul peak of the same precision. \"vs bare backbone\": the step's positions/s over the bare "
              "backbone's (random input embeddings, trivial loss, AdamW) at the same positions.", "",
              "| model | strategy | precision | params | positions | useful GFLOP/step | s/step | GFLOP/s | MFU "
              "| bare backbone MFU | vs bare backbone |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in d["rows"]:
        lines.append(f"| {x['size']} | {x['strategy']} | {x['precision']} | {x['params_m']:.1f}M | {x['positions']:.0f} | "
                     f"{x['useful_gflop']:.0f} | {x['s']:.2f} | {x['gflops']:.0f} | {x['mfu']:.0%} | "
                     f"{x['bare_mfu']:.0%} | {x['vs_backbone']:.2f} |")
        heads[f"MFU {x['size']} {x['strategy']} {x['precision']}"] = x["mfu"]
        if x["size"] == "30m":
            heads[f"vs bare backbone 30m {x['strategy']} {x['precision']}"] = x["vs_backbone"]
    lines += ["", "Targets: >= 80% MFU in fp32 and >= 50% in bf16 for the full step; >= 0.85 of the bare backbone's "
              "throughput at the 30M preset.", ""]
    for x in d["rows"]:
        if x.get("profile"):
            lines += [f"Where the step's time goes, {x['size']} {x['strategy']} {x['precision']}: one step under "
                      "torch.profiler, operators by self CPU time (matrix products: `aten::mm`, `aten::addmm`, "
                      "`aten::bmm`; the rest is what keeps MFU below the matmul rate).", "",
                      "| operator | calls | self ms | share |", "|---|---|---|---|",
                      *[f"| `{p['op']}` | {p['calls']} | {p['self_ms']:.0f} | {p['share']:.0%} |" for p in x["profile"]], ""]
    return lines, heads


def scaling_section(report: dict, out: Path) -> list[str]:
    r = result(report, "scaling")
    lines = ["## Scaling", ""]
    if not r or not r.get("data"):
        return lines + [f"Not measured: {(r or {}).get('error') or 'bench/scaling.py did not run'}", ""]
    d = r["data"]
    i = d["info"]
    lines += [f"Model dim {i['dim']}, {i['layers']} layers, {i['streams']} codebooks of 1024 (unless the curve varies "
              f"them), training batch {i['batch']} x {i['frames']} frames, decoding {i['decode_frames']} frames; "
              "frames/s (all rows), medians of repeated runs. Processes: the same global batch by one process and by "
              "2 gloo ranks (DDP, `torchrun --nproc_per_node 2`, one thread each).", ""]
    for p in d.get("pngs", []):
        name = Path(p).name
        # a report rewritten elsewhere (--from-json) links the copy next to it, if there is one
        link = name if (out.parent / name).is_file() else os.path.relpath(Path(p).resolve(), out.parent.resolve())
        lines.append(f"![{name}]({link})")
    lines += ["", "| curve | strategy | x | measure | s | frames/s | vs first point |", "|---|---|---|---|---|---|---|"]
    first: dict = {}
    for x in d["rows"]:
        if "frames_per_s" not in x:
            lines.append(f"| {x['curve']} | {x['strategy']} | {x['x']} | {x['what']} | failed | - | - |")
            continue
        key = (x["curve"], x["strategy"], x["what"])
        first.setdefault(key, x["frames_per_s"])
        label = f"{x['x']}" + (f" ({x['threads']} thr)" if "threads" in x else "")
        lines.append(f"| {x['curve']} | {x['strategy']} | {label} | {x['what']} | {x['s']:.3f} | "
                     f"{x['frames_per_s']:,.0f} | {x['frames_per_s'] / first[key]:.2f} |")
    return lines + [""]


def write_report(report: dict, out: Path) -> str:
    """Render ``report`` (what :func:`run_all` returns, or ``performance.json``) as markdown."""
    m, v = report["machine"], report["versions"]
    peer_lines, peer_heads = peer_section(report)
    mfu_lines, mfu_heads = mfu_section(report)
    rss = [(r["name"], r["peak_rss_mb"]) for r in report["results"] if r.get("peak_rss_mb")]
    lines = ["# Performance", "",
             f"Written by `{'make bench' if not report['quick'] else 'python bench/run_all.py --quick'}` "
             f"(bench/run_all.py) on {report['started']}; {report.get('total_s', 0) / 60:.1f} minutes in all."
             + (" **Quick run: small shapes, few repetitions; not for comparison.**" if report["quick"] else "")
             + (f" **Partial run: only {', '.join(report['only'])}** (`--only`); the other benchmarks did not run."
                if report.get("only") else ""), "",
             "## Machine and versions", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
             f"{fmt(m.get('mem_gib'), '.0f')} GiB memory",
             f"- native bf16: avx512_bf16 {'yes' if m['avx512_bf16'] else 'no'}, AMX {'yes' if m['amx_bf16'] else 'no'} "
             f"(avx512f {'yes' if m['avx512f'] else 'no'})",
             f"- threads per benchmark: {m['threads']} (OMP_NUM_THREADS); load average (1 min) at the start "
             f"{m['load_start']:.2f}, at the end {fmt(m.get('load_end'), '.2f')}",
             f"- python {v.get('python')}, torch {v.get('torch')}, numpy {v.get('numpy')}, speechlm git "
             f"{v.get('speechlm_git', '?')}" + (f"; peer env: {v['peer']}" if v.get("peer") else ""),
             f"- {m['os']}", ""]
    lines += ["Method: every script runs alone in its own process, one after the other, at the thread count above. "
              "`mfu`, `scaling`, `multiscale` and the peer report the median of repeated runs after a warm-up; "
              "`model`, `decode` and `stream` the fastest of their rounds (as their tables say). Ratios compare "
              "rows measured in this run only. The load average before each script is in the runs table: numbers "
              "measured while other work ran are not results.", ""]
    lines += ["What the numbers say, what stands in the way of the targets, and the changes made with their "
              "measured gains: [PERFORMANCE_NOTES.md](PERFORMANCE_NOTES.md) (by hand, on the run it names).", ""]
    lines += ["## Headline", ""]
    heads = {**{f"vs ESPnet {k}": f"{x:.2f}x" for k, x in peer_heads.items()},
             **{k: (f"{x:.0%}" if k.startswith("MFU") else f"{x:.2f}" if k.startswith("vs") else f"{x:,.0f} GFLOP/s")
                for k, x in mfu_heads.items()}}
    if rss:
        top = max(rss, key=lambda t: t[1])
        heads["largest peak RSS of a benchmark process"] = f"{top[1]:,.0f} MB ({top[0]})"
    lines += ["| figure | value | target |", "|---|---|---|", *[f"| {k} | {x} | {target(k)} |" for k, x in heads.items()], ""]
    lines += peer_lines + mfu_lines
    lines += ["## Benchmark runs", "",
              "Each script ran in its own process, one at a time. Peak RSS: `ru_maxrss` of the process (`wait4`).", "",
              "| benchmark | command | exit | wall s | peak RSS MB | load before |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        cmd = " ".join(r["cmd"]) if r["cmd"] else "(not run)"
        lines.append(f"| {r['name']} | `{cmd}` | {fmt(r['rc'], 'd') if r['rc'] is not None else '-'} | "
                     f"{r['wall_s']:.0f} | {fmt(r['peak_rss_mb'])} | {fmt(r['load_before'], '.2f')} |")
    lines.append("")
    lines += scaling_section(report, out)
    for r in report["results"]:
        if r["name"] in ("mfu", "scaling", "peer", "peer_ours"):
            continue
        lines += [f"## {r['title']}", "", f"`{' '.join(r['cmd'])}`" if r["cmd"] else "(not run)", ""]
        if r.get("error"):
            lines += ["It failed:", "", SKIP_MARK, "```", r["error"], "```", ""]
        for t in r.get("tables", []):
            lines += [t, ""]
        if not r.get("tables") and r.get("data") and isinstance(r["data"].get("rows"), list):
            lines += rows_table(r["data"]["rows"]) + [""]
        elif not r.get("tables") and r.get("output") and not r.get("error"):
            lines += [SKIP_MARK, "```", r["output"], "```", ""]
    lines += ["## GPU", "", "`bench/gpu.sh` runs the model and decoding benchmarks in bf16 with SDPA flash attention "
              "on the 360M preset and trains the mini recipe on one GPU; it is not part of this CPU run.", ""]
    text = "\n".join(lines).rstrip() + "\n"
    return text


def target(figure: str) -> str:
    """The issue's target for a headline figure ("" where it sets none)."""
    if figure.startswith("vs ESPnet train"):
        return ">= 1.5x"
    if figure.startswith("vs ESPnet decode"):
        return ">= 2x"
    if figure.startswith("MFU"):
        return ">= 80%" if figure.endswith("fp32") else ">= 50%"
    if figure.startswith("vs bare backbone 30m"):
        return ">= 0.85"
    return ""


def rows_table(rows: list[dict]) -> list[str]:
    """A markdown table of JSON rows (the union of their keys as columns)."""
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda x: (f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}") if isinstance(x, float) else str(x)  # noqa: E731
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions (< 5 minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs/PERFORMANCE.md"))
    ap.add_argument("--only", nargs="+", help="run only these benchmarks (names: " +
                    ", ".join(b.name for b in benches(2)) + ")")
    ap.add_argument("--peer-install", action="store_true", help="make the peer env even with --quick")
    ap.add_argument("--pair-rounds", type=int, default=2,
                    help="rounds of ours and the peer, alternated; each row keeps its fastest (default 2)")
    ap.add_argument("--from-json", help="rewrite the report from a recorded performance.json; run nothing")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        report = run_all(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / "performance.json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(write_report(report, out))
    print(f"[bench] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
