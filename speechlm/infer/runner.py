"""Decode a manifest with a model dir: batched, sharded (``--nj``), resumable, Kaldi-style outputs.

Output dir::

    text                  utt hypothesis          (text targets)
    text.nbest            utt rank score hypothesis, ``nbest`` lines per utterance (text targets)
    failed                utt reason: utterances not decoded (unreadable or empty input, longer
                          than the model's context, no speaker prompt); the others are decoded,
                          and the output is marked complete only when this file is empty
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
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechlm.data.audio import AudioError
from speechlm.data.manifest import read_manifest
from speechlm.data.speaker_prompt import SpeakerPrompt, prompt_source
from speechlm.data.token_archive import write_archive
from speechlm.infer.config import decode_config_for
from speechlm.infer.pipeline import InputError
from speechlm.utils.fileio import atomic_open, is_done, mark_done, write_json

log = logging.getLogger(__name__)


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


def _read_results(path: Path) -> dict[str, dict]:
    """The last record of each utterance in a shard's ``results.jsonl`` (a retried utterance's new
    record supersedes its old failure); a torn last line from a killed run is ignored."""
    recs: dict[str, dict] = {}
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    recs[rec["id"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    break  # a torn last line from a killed run: that utterance is decoded again
    return recs


# what makes one utterance fail (it goes to the `failed` list) rather than the whole job
INPUT_ERRORS = (InputError, AudioError, ValueError, KeyError, OSError)


def decode_shard(model_dir: str, manifest_dir: str, out_dir: Path, nj: int, job: int, decode_config: dict,
                 limit: int | None = None) -> Path:
    """Decode shard ``job`` of ``nj``; appends one JSON line per utterance, skipping those already done.

    An utterance whose input cannot be decoded (unreadable audio, no tokens, longer than the
    model's context, no speaker prompt) gets a ``{"id", "failed": reason}`` line and the others are
    decoded; the shard is marked done only when none failed, so a re-run retries the failed ones."""
    import torch

    from speechlm.infer.pipeline import Pipeline

    shard_dir = out_dir / f"split{nj}" / str(job)
    results = shard_dir / "results.jsonl"
    if is_done(results):
        return results
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = {u for u, r in _read_results(results).items() if "failed" not in r}
    template, rows = read_manifest(manifest_dir)
    rows = list(rows)
    by_id = {r["id"]: r for r in rows}  # every row can prompt another, whatever --limit keeps
    if limit:
        rows = rows[:limit]
    mine = [r for r in _shard_rows(rows, nj, job) if r["id"] not in done]
    pipe = Pipeline.load(model_dir, allow_pipes=True)  # recipe data dirs keep the `cmd |` convention
    pipe.templates.setdefault(template.name, template)
    cfg = decode_config_for(decode_config, template.name)
    seed, batch_size = cfg.seed, cfg.batch_size
    target = template.targets[0]
    tok = pipe.tokenizers[target.tokenizer]
    is_audio = tok.modality == "audio"
    prompts = _speaker_prompts(pipe, template, by_id, seed)
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Sort by input size so a batch holds similar lengths (less padding, fewer wasted steps).
    mine.sort(key=lambda r: (_input_size(r, template), r["id"]))
    n_failed = 0
    with open(results, "a", encoding="utf-8") as f:
        def write(rec: dict) -> None:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()

        for i in tqdm(range(0, len(mine), batch_size), desc=f"decode job {job + 1}/{nj}", disable=None):
            chunk, inputs, cond_seconds = [], [], []
            for r in mine[i: i + batch_size]:
                try:
                    toks = _condition_tokens(pipe, template, r, prompts)
                    pipe.prompt_example(template, toks, r["id"])  # refuses inputs beyond the context
                except INPUT_ERRORS as e:
                    reason = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
                    log.warning("%s: not decoded: %s", r["id"], reason)
                    write({"id": r["id"], "failed": " ".join(reason.split())})
                    n_failed += 1
                    continue
                chunk.append(r)
                inputs.append(toks)
                cond_seconds.append(sum(len(toks[s.name]) / pipe.tokenizers[s.tokenizer].frame_rate
                                        for s in template.conditions if s.modality == "audio"))
            if not chunk:
                continue
            t0 = time.perf_counter()
            outs = pipe.generate_outputs(template.name, inputs, cfg, ids=[r["id"] for r in chunk])
            elapsed = time.perf_counter() - t0
            for r, hyps, secs in zip(chunk, outs, cond_seconds):
                best = hyps[0]
                rec = {"id": r["id"], "tokens": best.tokens.tolist(), "seconds": elapsed / len(chunk),
                       "cond_audio_s": secs, "stopped": best.stopped, "score": best.score}
                if is_audio:
                    from speechlm.data.audio import write_wav

                    path = wav_dir / f"{r['id']}.wav"
                    wav = tok.decode(best.tokens) if len(best.tokens) else np.zeros(1, dtype=np.float32)
                    write_wav(path, wav, tok.sample_rate)
                    rec.update(wav=str(path.resolve()), audio_s=len(wav) / tok.sample_rate)
                else:
                    rec["text"] = pipe.detokenize(target.tokenizer, best.tokens)
                    rec["nbest"] = [[h.score, pipe.detokenize(target.tokenizer, h.tokens)] for h in hyps]
                write(rec)
    if n_failed == 0:
        mark_done(results)
    return results


def _speaker_prompts(pipe, template, by_id: dict[str, dict], seed: int) -> dict:
    """spk_prompt segment name -> its :class:`SpeakerPrompt` over the manifest's utterances (the
    rule training uses: another utterance of the speaker, a window of ``max_frames``)."""
    out = {}
    utt2spk = {u: r.get("spk", u) for u, r in by_id.items()}
    for seg in template.conditions:
        if seg.modality != "spk_prompt":
            continue
        src = prompt_source(template, seg)

        def tokens(utt: str, src=src, seg=seg) -> np.ndarray:
            value = by_id[utt]["segments"].get(src)
            if value is None:
                raise KeyError(f"{utt}: no {src!r} audio in the manifest to take a speaker prompt from")
            try:
                return pipe.encode_value(seg.tokenizer, value, utt)
            except INPUT_ERRORS as e:
                raise InputError(f"speaker prompt from {utt}: {e}") from e

        out[seg.name] = SpeakerPrompt(utt2spk, tokens, max_frames=int(seg.max_frames or 10 ** 9), seed=seed)
    return out


def _condition_tokens(pipe, template, row: dict, prompts: dict) -> dict[str, np.ndarray]:
    """Condition tokens of one manifest row, its speaker prompts taken by ``prompts``."""
    values = dict(row["segments"])
    for name, chooser in prompts.items():
        tokens = chooser(row["id"])
        if tokens is None:
            spk = chooser.utt2spk[row["id"]]
            raise InputError(f"{row['id']}: speaker {spk!r} has no other utterance in the manifest to take a "
                             "speaker prompt from (a prompt is never the utterance itself)")
        values[name] = np.asarray(tokens)
    return pipe.condition_tokens(template, values, row["id"])


def merge(out_dir: Path, nj: int, target_name: str) -> dict:
    """Merge shard results into Kaldi-style files; returns the timing summary (``failed``: how
    many utterances are listed in ``OUT/failed``)."""
    latest: dict[str, dict] = {}
    for j in range(nj):
        latest.update(_read_results(out_dir / f"split{nj}" / str(j) / "results.jsonl"))
    failed = sorted((r for r in latest.values() if "failed" in r), key=lambda r: r["id"])
    recs = sorted((r for r in latest.values() if "failed" not in r), key=lambda r: r["id"])
    with atomic_open(out_dir / "failed") as f:  # always written: a re-run that fixed them empties it
        f.writelines(f"{r['id']} {r['failed']}\n" for r in failed)
    if any("text" in r for r in recs):
        with atomic_open(out_dir / "text") as f:
            f.writelines(f"{r['id']} {r['text']}\n" for r in recs)
    if any("nbest" in r for r in recs):
        with atomic_open(out_dir / "text.nbest") as f:
            f.writelines(f"{r['id']} {k} {score:.4f} {text}\n"
                         for r in recs for k, (score, text) in enumerate(r.get("nbest", []), 1))
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
        "failed": len(failed),
        "stopped": sum(bool(r.get("stopped")) for r in recs) if any("stopped" in r for r in recs) else None,
        "decode_seconds": round(wall, 3), "frames": n_frames,
        "frames_per_second": round(n_frames / max(wall, 1e-9), 1),
        "audio_seconds": round(audio, 2), "rtf": round(wall / audio, 4) if audio else None,
    }
    write_json(out_dir / "timing.json", timing)
    return timing


def decode_manifest(model_dir: str, manifest_dir: str, out_dir: str, decode_config: dict | None = None,
                    nj: int = 1, limit: int | None = None, config_file: str | None = None,
                    shard: int | None = None) -> dict:
    """Decode every example of ``manifest_dir``; ``nj > 1`` runs the unfinished shards as parallel
    processes, then merges. ``shard`` (1-based) decodes only that shard of ``nj`` and returns ``{}``
    (a job of a recipe's run.pl or slurm.pl); a later call without it merges.

    ``decode_config`` holds :class:`~speechlm.infer.config.DecodeConfig` options (read from
    ``config_file``, named in errors); the resolved options, model and manifest are written to
    ``OUT/decode.yaml`` for scoring and reports. Utterances that could not be decoded are listed in
    ``OUT/failed`` (``utt reason``) and counted in the returned ``failed``; the output is then not
    marked complete, so running the same command again retries them.
    """
    import dataclasses

    import yaml

    from speechlm.infer.config import check_decode_options, check_task_entry

    if shard is not None and not 1 <= shard <= nj:
        raise ValueError(f"--shard must be in 1..{nj} (--nj), got {shard}")
    out = Path(out_dir)
    if is_done(out / "timing.json"):
        log.info("%s is complete, skipping", out)
        return json.loads((out / "timing.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    template, _ = read_manifest(manifest_dir)
    where = config_file or "decode options"
    check_decode_options(decode_config, where)  # every entry's keys
    check_task_entry(decode_config, template.name, where)
    decode_config = dataclasses.asdict(decode_config_for(decode_config, template.name, where))
    with atomic_open(out / "decode.yaml") as f:
        yaml.safe_dump({"model_dir": str(Path(model_dir).resolve()), "manifest_dir": str(Path(manifest_dir).resolve()),
                        "nj": nj, "limit": limit, "decode": decode_config}, f, sort_keys=False)
    if shard is not None:
        decode_shard(model_dir, manifest_dir, out, nj, shard - 1, decode_config, limit)
        return {}
    if nj == 1:
        decode_shard(model_dir, manifest_dir, out, 1, 0, decode_config, limit)
    else:
        from speechlm.utils.jobs import run_jobs

        run_jobs([(j + 1, [sys.executable, "-m", "speechlm.infer.runner",
                           json.dumps([model_dir, manifest_dir, str(out), nj, j, decode_config, limit])],
                   out / f"split{nj}" / f"decode.{j + 1}.log")
                  for j in range(nj) if not is_done(out / f"split{nj}" / str(j) / "results.jsonl")],  # unfinished
                 {**os.environ, "OMP_NUM_THREADS": "1"}, "decode job", nj)
    timing = merge(out, nj, template.targets[0].name)
    if timing["failed"]:
        log.warning("decoded %d utterances -> %s; %d FAILED (listed with reasons in %s; run the same command "
                    "again to retry them)", timing["utterances"], out, timing["failed"], out / "failed")
        return timing
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
