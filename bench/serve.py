"""Serving throughput and latency: concurrent clients against the batching scheduler and against
the same server decoding one request at a time (``--max-batch 1``).

Clients transcribe espeak-ng utterances (1.5-4 s, the ``asr`` task) in a closed loop: each sends
its next request when the last one is answered. For every server (batched, one at a time) and
every number of clients (1, 4, 16) the table gives throughput (answers per second over
``--seconds``), p50/p95 latency and the mean batch size; then the throughput ratio at the most
clients (the issue's target: >= 3x at 16 clients on 2 cores).

Modes: ``http`` starts ``speechlm serve`` (a subprocess on 127.0.0.1) and posts to
``/v1/audio/transcriptions``; ``inproc`` drives :class:`speechlm.serve.scheduler.BatchScheduler`
in this process (no HTTP); ``auto`` (default): http when the ``serve`` command exists.

Without ``--model-dir`` a model dir is built: Codec 2 speech in, characters out, a randomly
initialised model shaped like the voice agent recipe's (``--dim`` 256, ``--layers`` 4, audio
rows stacked ``--cond-reduction`` 4 to a position; speed does not depend on the weights); its decode.yaml
fixes each output at 0.3 characters per condition row (about 15 characters per second of
speech), so requests differ in length as real transcriptions do.

    python -P bench/serve.py                 # http when `speechlm serve` exists; --mode inproc: no HTTP
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

SENTENCES = [
    "turn off the kitchen lights",
    "what is the weather like in paris tomorrow morning",
    "set an alarm for seven thirty",
    "play some relaxing jazz music in the living room please",
    "how many minutes are left on my timer",
    "remind me to call my sister after work today",
    "add milk and eggs to the shopping list",
    "is it going to rain this weekend",
]
CHARS = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz0123456789_=;|:'?.,-"]


def build_model_dir(root: Path, dim: int, layers: int, cond_reduction: int, seed: int = 0) -> Path:
    """A packed-style model dir (weights, vocabulary, tokenizers, tasks, decode options) for ASR."""
    import torch
    import yaml

    from speechlm.models import ModelConfig, SpeechLM
    from speechlm.tasks.template import BUILTIN_DIR
    from speechlm.tokenizers import load_tokenizers
    from speechlm.vocab import Vocabulary

    (root / "tokenizers" / "text_bpe").mkdir(parents=True, exist_ok=True)
    (root / "tokenizers" / "text_bpe" / "chars.txt").write_text("\n".join(CHARS) + "\n")
    (root / "tokenizers.yaml").write_text(yaml.safe_dump(
        {"codec": {"type": "codec2"}, "text_bpe": {"type": "char", "vocab": "tokenizers/text_bpe/chars.txt"}}))
    (root / "tasks").mkdir(exist_ok=True)
    tasks = ("asr", "command")
    for t in tasks:
        shutil.copy(BUILTIN_DIR / f"{t}.yaml", root / "tasks" / f"{t}.yaml")
    (root / "decode.yaml").write_text("search: greedy\nmin_len_ratio: 0.3\nmax_len_ratio: 0.3\nmax_len: 200\n")
    toks = load_tokenizers(root / "tokenizers.yaml", base_dir=root)
    vocab = Vocabulary()
    for name in ("codec", "text_bpe"):
        vocab.add_tokenizer(name, toks[name].codebook_sizes)
    for t in tasks:
        vocab.add_task(t)
    torch.manual_seed(seed)
    model = SpeechLM(ModelConfig(strategy="delay", dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                 prefix_lm=True, max_len=2048, cond_reduction=cond_reduction), vocab)
    model.save_pretrained(root)
    return root


def synth_wavs(root: Path) -> list[Path]:
    if shutil.which("espeak-ng") is None:
        sys.exit("bench/serve.py needs espeak-ng for its requests (tools/install.sh installs it)")
    out = []
    for i, text in enumerate(SENTENCES):
        p = root / f"req{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(p), text], check=True)
        out.append(p)
    return out


# ---- clients -----------------------------------------------------------------------------------------
def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (the OpenAI transcription upload) and its content type."""
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f'Content-Type: audio/wav\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


class HttpClient:
    """Posts a wav to ``/v1/audio/transcriptions`` and returns the text."""

    def __init__(self, base: str, wavs: list[Path]) -> None:
        self.base = base
        self.bodies = [multipart({"model": "speechlm", "response_format": "json"}, w.name, w.read_bytes()) for w in wavs]

    def __call__(self, i: int) -> str:
        body, ctype = self.bodies[i % len(self.bodies)]
        req = urllib.request.Request(f"{self.base}/v1/audio/transcriptions", data=body, method="POST",
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())["text"]

    def stats(self) -> dict | None:
        """The scheduler's stats, if the server's ``/health`` reports them (key ``scheduler``)."""
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=10) as r:
                h = json.loads(r.read())
        except (OSError, ValueError):
            return None
        s = h.get("scheduler") if isinstance(h, dict) else None
        return s if isinstance(s, dict) and "batches" in s and "mean_batch" in s else None


class InprocClient:
    """Submits straight to a :class:`BatchScheduler` in this process."""

    def __init__(self, sched, wavs: list[Path]) -> None:
        self.sched, self.wavs = sched, [str(w) for w in wavs]

    def __call__(self, i: int) -> str:
        return self.sched.submit_sync("asr", {"speech": self.wavs[i % len(self.wavs)]}, timeout=300)[0]

    def stats(self) -> dict | None:
        return self.sched.stats()


def load(client, n_clients: int, seconds: float, warmup: int) -> dict:
    """``n_clients`` closed-loop clients for ``seconds``: answers/s and latency percentiles of the
    requests sent within the window (each client first sends ``warmup`` untimed requests)."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    window = {}

    def open_window() -> None:  # the barrier's action: runs once, before any client passes it
        window["t0"] = time.monotonic()
        window["stop"] = window["t0"] + seconds

    start = threading.Barrier(n_clients + 1, action=open_window)

    def run(c: int) -> None:
        for k in range(warmup):
            client(c + k)
        start.wait()
        k = 0
        while time.monotonic() < window["stop"]:
            t = time.monotonic()
            try:
                client(c * 3 + k)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            else:
                with lock:
                    lat.append(time.monotonic() - t)
            k += 1

    with concurrent.futures.ThreadPoolExecutor(n_clients) as ex:
        futs = [ex.submit(run, c) for c in range(n_clients)]
        start.wait()
        for f in futs:
            f.result()
        wall = time.monotonic() - window["t0"]  # includes the requests in flight when the window closed
    a = np.array(lat) if lat else np.array([float("nan")])
    return {"rps": len(lat) / wall, "p50": 1000 * np.percentile(a, 50), "p95": 1000 * np.percentile(a, 95),
            "n": len(lat), "errors": errors}


def mean_batch(before: dict | None, after: dict | None) -> float | None:
    """Requests per decoded batch between two scheduler stats snapshots (warm-up included)."""
    if before is None or after is None:
        return None
    batches = after["batches"] - before["batches"]
    reqs = after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"]
    return reqs / batches if batches else None


# ---- servers ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_serve_command() -> bool:
    r = subprocess.run([sys.executable, "-m", "speechlm", "serve", "--help"], capture_output=True, text=True,
                       check=False)
    return r.returncode == 0


class HttpServer:
    """``speechlm serve`` in a subprocess, until the context ends."""

    def __init__(self, model_dir: Path, max_batch: int, window_ms: float, threads: int, log_path: Path) -> None:
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "speechlm", "serve", "--model-dir", str(model_dir), "--port", str(self.port),
                    "--max-batch", str(max_batch), "--window-ms", str(window_ms), "--threads", str(threads)]
        self.log_path = log_path

    def __enter__(self) -> str:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.cmd)}` exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    return base
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise RuntimeError(f"the server did not answer /health within 180 s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class InprocServer:
    def __init__(self, pipe, max_batch: int, window_ms: float) -> None:
        self.pipe, self.max_batch, self.window_s = pipe, max_batch, window_ms / 1000

    def __enter__(self):
        from speechlm.serve.scheduler import BatchScheduler

        self.sched = BatchScheduler(self.pipe, max_batch=self.max_batch, window_s=self.window_s)
        return self.sched

    def __exit__(self, *exc) -> None:
        self.sched.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, help="a model dir with an `asr` task (default: build a random one)")
    ap.add_argument("--mode", choices=["auto", "http", "inproc"], default="auto")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=15.0, help="timed window per cell")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests per client before the window")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's max batch")
    ap.add_argument("--window-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server (1: at this size 2 were slower; the other core encodes and serves HTTP)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--cond-reduction", type=int, default=4,
                    help="audio condition rows stacked per backbone position (the voice agent recipe's model: 4)")
    ap.add_argument("--work", type=Path, help="keep the built model dir, wavs and server logs here")
    args = ap.parse_args(argv)

    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or build_model_dir(work / "model", args.dim, args.layers, args.cond_reduction)
    wavs = synth_wavs(work)
    mode = args.mode if args.mode != "auto" else ("http" if has_serve_command() else "inproc")
    secs = [len(w.read_bytes()) / (2 * 22050) for w in wavs]  # espeak-ng: 22.05 kHz 16-bit mono
    print(f"mode={mode} model_dir={model_dir} server threads={args.threads} cpus={os.cpu_count()} "
          f"requests: asr on {len(wavs)} utterances of {min(secs):.1f}-{max(secs):.1f} s; {args.seconds:.0f} s per cell")
    if mode == "inproc":
        import speechlm

        torch.set_num_threads(args.threads)
        pipe = speechlm.load(model_dir)

    servers = [(f"batched (max {args.max_batch})", args.max_batch), ("one at a time (max 1)", 1)]
    rows = {}
    print("\n| server | clients | answers/s | p50 ms | p95 ms | mean batch | errors |\n|---|---|---|---|---|---|---|")
    for name, max_batch in servers:
        if mode == "http":
            server = HttpServer(model_dir, max_batch, args.window_ms, args.threads, work / f"server_max{max_batch}.log")
        else:
            server = InprocServer(pipe, max_batch, args.window_ms)
        with server as handle:
            client = HttpClient(handle, wavs) if mode == "http" else InprocClient(handle, wavs)
            for c in args.clients:
                before = client.stats()
                r = load(client, c, args.seconds, args.warmup)
                rows[(max_batch, c)] = r
                mb = mean_batch(before, client.stats())
                print(f"| {name} | {c} | {r['rps']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                      f"{'-' if mb is None else f'{mb:.1f}'} | {len(r['errors'])} |", flush=True)
                for e in sorted(set(r["errors"]))[:3]:
                    print(f"|   error: {e[:120]} | | | | | | |")
    top = max(args.clients)
    ratio = rows[(args.max_batch, top)]["rps"] / max(rows[(1, top)]["rps"], 1e-9)
    print(f"\nthroughput at {top} clients: batched / one at a time = {ratio:.1f}x (target >= 3x)")
    return 0 if not any(r["errors"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
