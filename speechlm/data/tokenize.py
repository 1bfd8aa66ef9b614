"""Tokenization of a manifest dir into kaldiio token archives (the work of ``speechlm tokenize``).

For each segment of ``DIR/template.yaml`` (except ``spk_prompt`` segments, which reuse the audio
archive of their tokenizer when sequences are built) this writes::

    DIR/tokens/<segment>.ark  .scp      int32 [frames, streams] per utterance (kaldiio, numpy format)
    DIR/tokens/<segment>.lengths        utt frames
    DIR/tokens/<segment>.failed         utt reason (utterances that could not be tokenized)

The work is four steps: :func:`plan` (what is left to do; a finished segment whose tokenizer
options, tokenizer files and manifest entries are unchanged is skipped, and one that a sibling
task dir already encoded is linked from there), :func:`run_shard` (encode shard I of N, journaling
each utterance, so a killed job resumes), the local process pool of :func:`tokenize_manifest`,
and :func:`merge` (the shards, in manifest order, into the final archive, written atomically).

A recipe launches the shards itself, ``${cpu_cmd} JOB=1:N log/tokenize.JOB.log speechlm tokenize
... --nj N --shard JOB`` (run.pl or slurm.pl: a cluster spreads them), then merges with the same
command without ``--shard``; without a launcher, ``--nj N`` runs the N shards as local processes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path


log = logging.getLogger("speechlm.tokenize")


@dataclass
class TokenizeJob:
    """What to tokenize and how (the options of ``speechlm tokenize``)."""

    manifest_dir: str  # dir with manifest.jsonl + template.yaml (speechlm prepare)
    tokenizers: str  # tokenizers.yaml: instance name -> {type: ..., options}
    nj: int = 1  # number of shards
    shard: int | None = None  # encode only this shard (1-based); None: all shards, then merge
    segments: list[str] | None = None  # only these segments (default: all)
    batch_size: int = 1  # utterances per encode_batch call
    device: str | None = None  # override the device of every audio tokenizer
    threads: int = 1  # torch threads per process (0 or less: cores // nj)


# -- what to do ---------------------------------------------------------------------------------
def _fingerprint(spec: dict, seg_name: str, rows: list[dict], files: dict[str, str] | None = None) -> str:
    """Hash of the tokenizer options, the contents of its files (``files``: option -> sha256; a
    BPE model retrained at the same path changes the tokens) and the segment's (id, value)
    pairs: outputs depend on nothing else."""
    h = hashlib.sha256(json.dumps({"segment": seg_name, "tokenizer": spec}, sort_keys=True).encode())
    if files:  # only when there are files, so archives of file-less tokenizers (codec2, g2p) stay valid
        h.update(json.dumps({"files": files}, sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r["id"], r["segments"].get(seg_name)], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def plan(job: TokenizeJob):
    """(tok_dir, rows, [(segment, spec, fingerprint) still to do]) for this manifest dir.

    A segment a sibling task dir already encoded the same way is linked from there, except in a
    ``shard`` job: concurrent jobs must not link at once, so they skip it and the merge links it."""
    from speechlm.config import ConfigError
    from speechlm.data.manifest import read_manifest
    from speechlm.registry import suggest
    from speechlm.tokenizers import file_digests, load_tokenizer_specs
    from speechlm.utils.fileio import is_done

    template, examples = read_manifest(job.manifest_dir)
    rows = list(examples)
    specs = load_tokenizer_specs(job.tokenizers)
    segs = [s for s in template.segments if s.modality != "spk_prompt"]
    names = [s.name for s in segs]
    for name in job.segments or []:
        if name not in names:
            raise ConfigError(f"--segments: task {template.name!r} has no tokenizable segment {name!r}"
                              f"{suggest(name, names)}; its segments: {', '.join(names)}")
    tok_dir = Path(job.manifest_dir) / "tokens"
    todo = []
    digests: dict[str, dict[str, str]] = {}  # tokenizer -> its files' sha256, hashed once per run
    for seg in segs:
        if job.segments and seg.name not in job.segments:
            continue
        if seg.tokenizer not in specs:
            raise ConfigError(f"{job.tokenizers}: no tokenizer named {seg.tokenizer!r} (segment {seg.name!r} of "
                              f"task {template.name!r}){suggest(seg.tokenizer, specs)}; it defines: {', '.join(specs)}")
        spec = dict(specs[seg.tokenizer])
        spec.pop("rows_of", None)  # where the ids go in the vocabulary, not what the tokens are
        if seg.tokenizer not in digests:
            digests[seg.tokenizer] = file_digests(spec)
        fp = _fingerprint(spec, seg.name, rows, digests[seg.tokenizer])
        scp = tok_dir / f"{seg.name}.scp"
        if is_done(scp):
            info = json.loads((tok_dir / f"{seg.name}.scp.done").read_text())
            if info.get("fingerprint") == fp:
                log.info("segment %s: %s is complete, skipping", seg.name, scp)
                continue
            log.info("segment %s: tokenizer options, tokenizer files or manifest changed since %s was written; "
                     "redoing it", seg.name, scp)
        if _reuse(tok_dir, seg.name, fp, link=job.shard is None):
            continue
        todo.append((seg, spec, fp))
    return tok_dir, rows, todo


def _reuse(tok_dir: Path, seg_name: str, fp: str, link: bool = True) -> bool:
    """Link an archive with the same fingerprint from a sibling task dir (e.g. the speech of the
    ``asr`` and ``tts`` dumps of one set) instead of encoding the audio again (``link=False``: only
    say whether one exists)."""
    from speechlm.utils.fileio import atomic_open, is_done, mark_done

    for done in sorted(tok_dir.parent.parent.glob(f"*/tokens/{seg_name}.scp.done")):
        src = done.parent
        if src == tok_dir or not is_done(src / f"{seg_name}.scp"):
            continue
        info = json.loads(done.read_text())
        if info.get("fingerprint") != fp:
            continue
        if not link:
            return True
        tok_dir.mkdir(parents=True, exist_ok=True)
        src_ark, dst_ark = src / f"{seg_name}.ark", tok_dir / f"{seg_name}.ark"
        tmp = dst_ark.with_name(dst_ark.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src_ark, tmp)
        except OSError:
            shutil.copyfile(src_ark, tmp)
        os.replace(tmp, dst_ark)
        old, new = str(src_ark.resolve()), str(dst_ark.resolve())
        with atomic_open(tok_dir / f"{seg_name}.scp") as f:
            for line in (src / f"{seg_name}.scp").read_text(encoding="utf-8").splitlines():
                utt, where = line.split(" ", 1)
                f.write(f"{utt} {where.replace(old, new, 1)}\n")
        for suffix in (".lengths", ".failed"):  # ids and counts only: the same for both tasks
            if (src / f"{seg_name}{suffix}").is_file():
                shutil.copyfile(src / f"{seg_name}{suffix}", tok_dir / f"{seg_name}{suffix}")
        mark_done(tok_dir / f"{seg_name}.scp", {**info, "reused_from": str(src)})
        log.info("segment %s: same tokenizer and audio as %s, linked its archive", seg_name, src)
        return True
    return False


def _shard_rows(rows: list[dict], shard: int, nj: int) -> list[dict]:
    n = len(rows)
    return rows[(shard - 1) * n // nj: shard * n // nj]


def _shard_prefix(tok_dir: Path, seg_name: str, shard: int, nj: int) -> Path:
    return tok_dir / "shards" / f"{seg_name}.{shard}-of-{nj}"


# -- one shard ----------------------------------------------------------------------------------
def _encode_value(tok, seg, value, utt: str):
    from speechlm.data.audio import read_audio, to_mono

    if seg.is_audio:
        wav, sr = read_audio(value, utt_id=utt)
        return tok.encode_file(to_mono(wav), sr, value)
    if not isinstance(value, str):
        raise ValueError(f"text segment {seg.name!r} expects a string, got {type(value).__name__}")
    return tok.encode(value)


def _check(tok, arr, utt: str):
    from speechlm.data.token_archive import check_tokens
    import numpy as np

    arr = check_tokens(arr, utt)
    if arr.shape[0] == 0:
        raise ValueError("the tokenizer returned 0 frames")
    if arr.shape[1] != tok.n_streams:
        raise ValueError(f"the tokenizer returned {arr.shape[1]} streams, it declares {tok.n_streams}")
    if (arr < 0).any() or (arr >= np.asarray(tok.codebook_sizes)).any():
        raise ValueError(f"token ids outside the codebook sizes {tok.codebook_sizes}")
    return arr


def run_shard(tok_dir: Path, rows: list[dict], todo, shard: int, nj: int, job: TokenizeJob) -> None:
    """Tokenize shard ``shard`` (1-based) of ``nj`` for every pending segment; resumable."""
    from tqdm import tqdm

    from speechlm.data.token_archive import ShardWriter
    from speechlm.tokenizers import build_tokenizer
    from speechlm.utils.fileio import mark_done, write_text

    mine = _shard_rows(rows, shard, nj)
    tokenizers: dict[str, object] = {}
    for seg, spec, fp in todo:
        prefix = _shard_prefix(tok_dir, seg.name, shard, nj)
        journal = prefix.with_name(prefix.name + ".journal")
        fp_file = prefix.with_name(prefix.name + ".fingerprint")
        if _shard_done(tok_dir, seg.name, shard, nj, fp):
            continue
        if not fp_file.exists() or fp_file.read_text() != fp:  # stale partial shard of other options
            for suffix in (".ark", ".journal", ".journal.done"):
                prefix.with_name(prefix.name + suffix).unlink(missing_ok=True)
            write_text(fp_file, fp)
        if seg.tokenizer not in tokenizers:
            if job.device and spec.get("type") and "device" in _init_params(spec):
                spec = {**spec, "device": job.device}
            tokenizers[seg.tokenizer] = build_tokenizer(spec, where=f"{job.tokenizers}:{seg.tokenizer}")
        tok = tokenizers[seg.tokenizer]
        writer = ShardWriter(prefix)
        memo: dict[str, object] | None = {} if seg.is_audio else None  # one encoding per recording
        pending = [r for r in mine if r["id"] not in writer]
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"{seg.name} {shard}/{nj}",
                   unit="utt", mininterval=1.0, disable=None)  # no bar when stderr is not a terminal
        try:
            for i in range(0, len(pending), max(1, job.batch_size)):
                _check_parent()
                batch = pending[i:i + max(1, job.batch_size)]
                _tokenize_batch(tok, seg, batch, writer, memo)
                bar.update(len(batch))
        finally:
            bar.close()
            writer.close()
        mark_done(journal, {"entries": len(writer.entries), "failed": len(writer.failed)})
        log.info("shard %d/%d of segment %s: %d utterances, %d failed", shard, nj, seg.name,
                 len(writer.entries), len(writer.failed))


_PARENT_ENV = "SPEECHLM_TOKENIZE_PARENT"  # pid of the run that spawned this shard job


def _check_parent() -> None:
    """A shard job spawned by a run stops when that run is gone: no orphan keeps writing shards
    beside a re-run (the death signal set at spawn covers Linux; this covers the rest)."""
    parent = os.environ.get(_PARENT_ENV)
    if parent and os.getppid() != int(parent):
        raise SystemExit(f"tokenize: the parent run (pid {parent}) is gone; stopping this shard job")


def _init_params(spec: dict) -> list[str]:
    import inspect

    from speechlm.tokenizers import tokenizer_class

    return list(inspect.signature(tokenizer_class(spec["type"]).__init__).parameters)


MEMO_SIZE = 256  # recordings whose tokens a shard job keeps for rows that repeat them


class _Remember:
    """A shard writer that also keeps each new utterance's tokens under its recording's key."""

    def __init__(self, writer, keys: dict[str, str], memo: dict) -> None:
        self.writer, self.keys, self.memo = writer, keys, memo

    def add(self, utt: str, arr) -> None:
        self.writer.add(utt, arr)
        self.memo[self.keys[utt]] = arr
        if len(self.memo) > MEMO_SIZE:  # rows of one recording are neighbours: the newest suffice
            del self.memo[next(iter(self.memo))]

    def __contains__(self, utt: str) -> bool:
        return utt in self.writer

    def __getattr__(self, name: str):
        return getattr(self.writer, name)


def _tokenize_batch(tok, seg, batch: list[dict], writer, memo: dict | None = None) -> None:
    """Encode a batch (``encode_batch`` for audio when it has several items); bad items are journaled as failures.

    With ``memo``, rows that name a recording already encoded (the steps of one spoken dialogue
    share its request) get those tokens without encoding it again."""
    if memo is not None and seg.is_audio:
        keys = {r["id"]: json.dumps(r["segments"].get(seg.name), sort_keys=True) for r in batch}
        first: dict[str, dict] = {}
        later = []
        for r in batch:
            key = keys[r["id"]]
            if key in memo:
                writer.add(r["id"], memo[key])
            elif key in first:
                later.append(r)
            else:
                first[key] = r
        _tokenize_batch(tok, seg, list(first.values()), _Remember(writer, keys, memo))
        for r in later:  # a recording that failed is tried (and reported) again for each of its rows
            if keys[r["id"]] in memo:
                writer.add(r["id"], memo[keys[r["id"]]])
            else:
                _tokenize_batch(tok, seg, [r], writer)
        return
    from speechlm.data.audio import read_audio, to_mono

    if len(batch) > 1 and seg.is_audio and not tok.needs_path:
        wavs, ok = [], []
        for r in batch:
            try:
                wav, sr = read_audio(r["segments"][seg.name], utt_id=r["id"])
                wavs.append((to_mono(wav), sr))
                ok.append(r)
            except Exception as e:  # unreadable audio: report and go on
                _fail(writer, r["id"], e)
        rates = {sr for _, sr in wavs}
        if ok and len(rates) == 1:
            try:
                outs = tok.encode_batch([w for w, _ in wavs], rates.pop())
                for r, arr in zip(ok, outs):
                    try:
                        writer.add(r["id"], _check(tok, arr, r["id"]))
                    except Exception as e:
                        _fail(writer, r["id"], e)
                return
            except Exception as e:
                log.debug("batch encode failed (%s); encoding one by one", e)
        batch = [r for r in ok if r["id"] not in writer]
    for r in batch:
        try:
            writer.add(r["id"], _check(tok, _encode_value(tok, seg, r["segments"].get(seg.name), r["id"]), r["id"]))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            _fail(writer, r["id"], e)


def _fail(writer, utt: str, e: BaseException) -> None:
    reason = f"{type(e).__name__}: {e}"
    log.warning("utterance %s skipped: %s", utt, reason)
    writer.add_failure(utt, reason)


# -- the stage ----------------------------------------------------------------------------------
def _shard_done(tok_dir: Path, seg_name: str, shard: int, nj: int, fp: str) -> bool:
    from speechlm.utils.fileio import is_done

    prefix = _shard_prefix(tok_dir, seg_name, shard, nj)
    fp_file = prefix.with_name(prefix.name + ".fingerprint")
    return is_done(prefix.with_name(prefix.name + ".journal")) and fp_file.exists() and fp_file.read_text() == fp


def _spawn(job: TokenizeJob, todo, shards: list[int], nj: int, tok_dir: Path, total: int) -> None:
    """Run ``shards`` of ``nj`` as child processes (``--threads`` each) with one progress bar over all of them."""
    from tqdm import tqdm

    from speechlm.utils.jobs import run_jobs
    from speechlm.utils.threads import available_cores

    segs = [seg.name for seg, _, _ in todo]
    threads = str(job.threads if job.threads > 0 else max(1, available_cores() // nj))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, _PARENT_ENV: str(os.getpid())}
    cmds = []
    for shard in shards:
        cmd = [sys.executable, "-m", "speechlm", "tokenize", "--manifest-dir", str(job.manifest_dir),
               "--tokenizers", str(job.tokenizers), "--nj", str(nj), "--shard", str(shard), "--threads", threads,
               "--batch-size", str(job.batch_size), "--segments", *segs]
        if job.device:
            cmd += ["--device", job.device]
        cmds.append((shard, cmd, tok_dir / "log" / f"tokenize.{shard}.log"))
    journals = [tok_dir / "shards" / f"{s}.{i}-of-{nj}.journal" for s in segs for i in range(1, nj + 1)]
    done_before = {j for j in journals if j.with_name(j.name + ".done").exists()}
    bar = tqdm(total=total, desc=f"tokenize ({nj} jobs)", unit="utt", mininterval=1.0)

    def progress() -> None:
        bar.n = sum(j.read_bytes().count(b"\n") for j in journals if j.exists() or j in done_before)
        bar.refresh()

    try:
        run_jobs(cmds, env, "tokenize shard", nj, progress)
    finally:
        bar.close()


def merge(tok_dir: Path, rows: list[dict], seg, spec: dict, fp: str, nj: int) -> dict:
    """Merge the finished shards of ``seg`` into ``tok_dir/<segment>.ark/.scp/.lengths/.failed``."""
    from speechlm.data.token_archive import ShardWriter, merge_shards
    from speechlm.utils.fileio import atomic_open, is_done, mark_done

    prefixes = [_shard_prefix(tok_dir, seg.name, i, nj) for i in range(1, nj + 1)]
    missing = [p for p in prefixes if not is_done(p.with_name(p.name + ".journal"))]
    if missing:
        raise RuntimeError(f"segment {seg.name}: shards not finished: {', '.join(p.name for p in missing)} "
                           f"(run them with --shard, or run without --shard to do everything)")
    shards = [ShardWriter(p, readonly=True) for p in prefixes]
    out = tok_dir / seg.name
    n, failed = merge_shards(shards, out, [r["id"] for r in rows])
    with atomic_open(tok_dir / f"{seg.name}.failed") as f:
        f.writelines(f"{u} {r}\n" for u, r in failed.items())
    info = {"fingerprint": fp, "tokenizer": spec, "utterances": n, "failed": len(failed)}
    mark_done(tok_dir / f"{seg.name}.scp", info)
    for p in prefixes:
        for suffix in (".ark", ".journal", ".journal.done", ".fingerprint"):
            p.with_name(p.name + suffix).unlink(missing_ok=True)
    return {"segment": seg.name, "written": n, "failed": failed}


def tokenize_manifest(job: TokenizeJob) -> int:
    """Do ``job``: one shard (``job.shard``), or every unfinished shard (as ``nj`` local
    processes) and then the merge. Returns 0; errors raise."""
    if job.nj < 1:
        raise ValueError(f"--nj must be >= 1, got {job.nj}")
    if job.shard is not None and not 1 <= job.shard <= job.nj:
        raise ValueError(f"--shard must be in 1..{job.nj} (--nj), got {job.shard}")
    if not Path(job.manifest_dir, "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{job.manifest_dir}: no manifest.jsonl (make it with `speechlm prepare`)")
    with _lock(job):
        return _run(job)


def _lock(job: TokenizeJob):
    """One run per manifest dir: a whole run locks ``tokens/tokenize.lock`` exclusively; a
    ``--shard`` job shares it (other jobs of the same run) and locks its own shard, unless its
    parent run holds the lock for it."""
    import contextlib

    from speechlm.utils.runlock import RunLock

    tok_dir = Path(job.manifest_dir) / "tokens"
    if job.shard is None:
        return RunLock(tok_dir / "tokenize.lock", "tokenize")
    parent = os.environ.get(_PARENT_ENV)
    stack = contextlib.ExitStack()
    shared = stack.enter_context(RunLock(tok_dir / "tokenize.lock", "tokenize", shared=True,
                                         owner_ok=int(parent) if parent else None))
    if shared.fd is not None:  # a job of run.pl/slurm.pl: two of the same shard must not run at once
        stack.enter_context(RunLock(tok_dir / "shards" / f"job.{job.shard}-of-{job.nj}.lock", "tokenize"))
    return stack


def _run(job: TokenizeJob) -> int:
    from speechlm.utils.threads import set_threads

    tok_dir, rows, todo = plan(job)
    if not todo:
        log.info("tokenize: nothing to do in %s", tok_dir)
        return 0
    if not rows:
        raise ValueError(f"{job.manifest_dir}: the manifest is empty")
    if job.shard is not None or job.nj == 1:  # this process encodes (a parent of --nj jobs needs no torch)
        set_threads(job.threads, jobs=job.nj)  # 0 or less: cores // nj
    if job.shard is not None:
        run_shard(tok_dir, rows, todo, job.shard, job.nj, job)
        return 0
    log.info("Stage tokenize: %s (%d utterances; segments %s) -> %s, %d job(s)", job.manifest_dir, len(rows),
             ", ".join(s.name for s, _, _ in todo), tok_dir, job.nj)
    start = time.time()
    if job.nj == 1:
        run_shard(tok_dir, rows, todo, 1, 1, job)
    else:
        pending = [i for i in range(1, job.nj + 1) if not all(_shard_done(tok_dir, seg.name, i, job.nj, fp)
                                                                for seg, _, fp in todo)]
        if pending:
            _spawn(job, todo, pending, job.nj, tok_dir, total=len(rows) * len(todo))
    n_failed = 0
    for seg, spec, fp in todo:
        res = merge(tok_dir, rows, seg, spec, fp, job.nj)
        n_failed += len(res["failed"])
        msg = f"segment {seg.name}: {res['written']} utterances -> {tok_dir / seg.name}.scp"
        if res["failed"]:
            ids = list(res["failed"])
            msg += (f"; {len(ids)} FAILED (listed with reasons in {tok_dir / seg.name}.failed): "
                    + ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""))
            log.warning(msg)
        else:
            log.info(msg)
    for lock in (tok_dir / "shards").glob("job.*.lock"):  # free: this run holds the dir lock
        lock.unlink()
    if (tok_dir / "shards").is_dir() and not any((tok_dir / "shards").iterdir()):
        (tok_dir / "shards").rmdir()
    log.info("tokenize: done in %.1f s%s", time.time() - start,
             f", {n_failed} utterance(s) skipped" if n_failed else "")
    return 0
