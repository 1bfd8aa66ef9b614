"""Decode a manifest with a model dir: batched, sharded (``--nj``), resumable, Kaldi-style outputs.

Output dir::

    text                  utt hypothesis          (text targets)
    wav.scp, wav/*.wav    generated audio         (audio targets, at the tokenizer's rate)
    tokens/<seg>.ark/scp  generated local tokens  [frames, streams] (+ .lengths)
    decode.yaml           the resolved decoding options, model dir and manifest
    stopped               utt 1|0: the model's end token ended the output (0: a length limit did)
    timing.json           real-time factor, tokens/s, wall time
    split<N>/<j>/results.jsonl + .done   per-shard results, appended per batch (resume point)
"""
from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechlm.data.manifest import read_manifest
from speechlm.data.token_archive import write_archive
from speechlm.infer.config import decode_config_for
from speechlm.utils.fileio import atomic_open, is_done, mark_done, write_json

log = logging.getLogger(__name__)


def prompt_utt(utt: str, spk: str, spk2utts: dict[str, list[str]], seed: int = 0) -> str:
    """A different utterance of the same speaker, chosen deterministically (itself if it is alone)."""
    others = [u for u in spk2utts.get(spk, []) if u != utt]
    if not others:
        return utt
    rng = random.Random(zlib.crc32(f"{seed}:{utt}".encode()))
    return rng.choice(sorted(others))


def _shard_rows(rows: list[dict], nj: int, job: int) -> list[dict]:
    return [r for i, r in enumerate(rows) if i % nj == job]


def _input_size(row: dict, template) -> int:
    """A cheap size of a row's conditions: bytes of audio files, characters of text."""
    size = 0
    for seg in template.conditions:
        value = row["segments"].get(seg.name)
        if seg.modality == "spk_prompt" or not isinstance(value, str):
            continue
        size += os.path.getsize(value) if seg.modality == "audio" and os.path.isfile(value) else len(value)
    return size


def decode_shard(model_dir: str, manifest_dir: str, out_dir: Path, nj: int, job: int, decode_config: dict,
                 limit: int | None = None) -> Path:
    """Decode shard ``job`` of ``nj``; appends one JSON line per utterance, skipping those already done."""
    import torch

    from speechlm.infer.pipeline import Pipeline

    shard_dir = out_dir / f"split{nj}" / str(job)
    results = shard_dir / "results.jsonl"
    if is_done(results):
        return results
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = set()
    if results.exists():
        with open(results, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line from a killed run: it is decoded again
    template, rows = read_manifest(manifest_dir)
    rows = list(rows)
    if limit:
        rows = rows[:limit]
    by_id = {r["id"]: r for r in rows}
    spk2utts: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        spk2utts[r.get("spk", r["id"])].append(r["id"])
    mine = [r for r in _shard_rows(rows, nj, job) if r["id"] not in done]
    pipe = Pipeline.load(model_dir)
    pipe.templates.setdefault(template.name, template)
    cfg = decode_config_for(decode_config, template.name)
    seed, batch_size = cfg.seed, cfg.batch_size
    target = template.targets[0]
    tok = pipe.tokenizers[target.tokenizer]
    is_audio = tok.modality == "audio"
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Sort by input size so a batch holds similar lengths (less padding, fewer wasted steps).
    mine.sort(key=lambda r: (_input_size(r, template), r["id"]))
    with open(results, "a", encoding="utf-8") as f:
        for i in tqdm(range(0, len(mine), batch_size), desc=f"decode job {job + 1}/{nj}", disable=None):
            chunk = mine[i: i + batch_size]
            inputs, cond_seconds = [], []
            for r in chunk:
                values = dict(r["segments"])
                for seg in template.conditions:
                    if seg.modality == "spk_prompt":
                        other = prompt_utt(r["id"], r.get("spk", r["id"]), spk2utts, seed)
                        audio_seg = next(s for s in template.segments if s.source == "wav.scp")
                        values[seg.name] = by_id[other]["segments"][audio_seg.name]
                toks = pipe.condition_tokens(template, values, r["id"])
                inputs.append(toks)
                cond_seconds.append(sum(len(t) / pipe.tokenizers[s.tokenizer].frame_rate
                                        for s in template.conditions if s.modality == "audio"
                                        for t in [toks[s.name]]))
            t0 = time.perf_counter()
            outs = pipe.generate_hypotheses(template.name, inputs, cfg, ids=[r["id"] for r in chunk])
            elapsed = time.perf_counter() - t0
            for r, (out, stopped), secs in zip(chunk, outs, cond_seconds):
                rec = {"id": r["id"], "tokens": out.tolist(), "seconds": elapsed / len(chunk), "cond_audio_s": secs,
                       "stopped": stopped}
                if is_audio:
                    from speechlm.data.audio import write_wav

                    path = wav_dir / f"{r['id']}.wav"
                    wav = tok.decode(out) if len(out) else np.zeros(1, dtype=np.float32)
                    write_wav(path, wav, tok.sample_rate)
                    rec.update(wav=str(path.resolve()), audio_s=len(wav) / tok.sample_rate)
                else:
                    rec["text"] = pipe.detokenize(target.tokenizer, out)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
    mark_done(results)
    return results


def merge(out_dir: Path, nj: int, target_name: str) -> dict:
    """Merge shard results into Kaldi-style files; returns the timing summary."""
    recs = []
    for j in range(nj):
        with open(out_dir / f"split{nj}" / str(j) / "results.jsonl", encoding="utf-8") as f:
            recs += [json.loads(line) for line in f]
    recs.sort(key=lambda r: r["id"])
    if any("text" in r for r in recs):
        with atomic_open(out_dir / "text") as f:
            f.writelines(f"{r['id']} {r['text']}\n" for r in recs)
    if any("stopped" in r for r in recs):
        with atomic_open(out_dir / "stopped") as f:
            f.writelines(f"{r['id']} {int(r['stopped'])}\n" for r in recs if "stopped" in r)
    if any("wav" in r for r in recs):
        with atomic_open(out_dir / "wav.scp") as f:
            f.writelines(f"{r['id']} {r['wav']}\n" for r in recs)
    def frames(tokens: list) -> np.ndarray:  # an empty hypothesis is 0 frames of 1 stream
        return np.asarray(tokens, dtype=np.int32).reshape(len(tokens), -1) if tokens else np.zeros((0, 1), np.int32)

    write_archive(out_dir / "tokens" / target_name, ((r["id"], frames(r["tokens"])) for r in recs))
    wall = sum(r["seconds"] for r in recs)
    n_frames = sum(len(r["tokens"]) for r in recs)
    audio = sum(r.get("audio_s", 0) for r in recs) or sum(r.get("cond_audio_s", 0) for r in recs)
    timing = {
        "utterances": len(recs),
        "stopped": sum(bool(r.get("stopped")) for r in recs) if any("stopped" in r for r in recs) else None,
        "decode_seconds": round(wall, 3), "frames": n_frames,
        "frames_per_second": round(n_frames / max(wall, 1e-9), 1),
        "audio_seconds": round(audio, 2), "rtf": round(wall / audio, 4) if audio else None,
    }
    write_json(out_dir / "timing.json", timing)
    return timing


def decode_manifest(model_dir: str, manifest_dir: str, out_dir: str, decode_config: dict | None = None,
                    nj: int = 1, limit: int | None = None) -> dict:
    """Decode every example of ``manifest_dir``; ``nj > 1`` runs shards as parallel processes.

    ``decode_config`` holds :class:`~speechlm.infer.config.DecodeConfig` options; the resolved
    options, model and manifest are written to ``OUT/decode.yaml`` for scoring and reports.
    """
    import dataclasses

    import yaml

    out = Path(out_dir)
    if is_done(out / "timing.json"):
        log.info("%s is complete, skipping", out)
        return json.loads((out / "timing.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    template, _ = read_manifest(manifest_dir)
    decode_config = dataclasses.asdict(decode_config_for(decode_config, template.name))
    with atomic_open(out / "decode.yaml") as f:
        yaml.safe_dump({"model_dir": str(Path(model_dir).resolve()), "manifest_dir": str(Path(manifest_dir).resolve()),
                        "nj": nj, "limit": limit, "decode": decode_config}, f, sort_keys=False)
    if nj == 1:
        decode_shard(model_dir, manifest_dir, out, 1, 0, decode_config, limit)
    else:
        procs = []
        for j in range(nj):
            cmd = [sys.executable, "-m", "speechlm.infer.runner", json.dumps(
                [model_dir, manifest_dir, str(out), nj, j, decode_config, limit])]
            log_path = out / f"split{nj}" / f"decode.{j + 1}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs.append((subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env), log_path))
        failed = [lp for p, lp in procs if p.wait() != 0]
        if failed:
            last = failed[0].read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            raise RuntimeError(f"decoding job(s) failed, see {', '.join(map(str, failed))}; {failed[0].name}: {last[0]}")
    timing = merge(out, nj, template.targets[0].name)
    mark_done(out / "timing.json")
    log.info("decoded %d utterances -> %s (%s frames/s, RTF %s)", timing["utterances"], out,
             timing["frames_per_second"], timing["rtf"])
    return timing


if __name__ == "__main__":  # one shard, launched by decode_manifest
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    a = json.loads(sys.argv[1])
    decode_shard(a[0], a[1], Path(a[2]), a[3], a[4], a[5], a[6])
