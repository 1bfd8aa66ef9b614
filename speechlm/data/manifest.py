"""Manifests: a data dir joined with a task template, one JSON line per example.

``DIR/manifest.jsonl``::

    {"id": "utt1", "spk": "spk1", "segments": {"speech": "/data/utt1.wav", "text": "HELLO"}}

``DIR/template.yaml`` holds the resolved template, so a dump never depends on a template file
that may change later.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from speechlm.data.kaldi import DataDir
from speechlm.tasks import TaskTemplate
from speechlm.tasks.template import load_template_file
from speechlm.utils.fileio import atomic_open, is_done, mark_done

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
TEMPLATE = "template.yaml"


def _segment_value(data: DataDir, seg, utt: str):
    """The value of ``seg`` for ``utt``, or None if the data dir lacks it."""
    if seg.modality == "spk_prompt":
        return data.files.get("utt2spk", {}).get(utt)
    if seg.source == "wav.scp":
        if utt not in data.files.get("segments", data.files.get("wav.scp", {})):
            return None
        return data.audio_value(utt)
    table = data.files.get(seg.source)
    return None if table is None else table.get(utt)


def prepare_manifest(template: TaskTemplate, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     force: bool = False) -> dict:
    """Write ``out_dir/manifest.jsonl`` + ``template.yaml``; returns ``{"kept": n, "dropped": {reason: n}}``.

    Skips the work when a complete manifest is already there (unless ``force``).
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if is_done(manifest) and not force:
        log.info("manifest %s is complete, skipping (use --force to redo)", manifest)
        return json.loads((out_dir / (MANIFEST + ".done")).read_text())
    needed = {s.source for s in template.segments}
    data = DataDir.load(data_dir, extra=tuple(sorted(needed)))
    missing = sorted(f for f in needed if f not in data.files)
    if missing:
        raise FileNotFoundError(
            f"data dir {data_dir} lacks {', '.join(missing)} needed by task {template.name!r} "
            f"(segments: {', '.join(f'{s.name}<-{s.source}' for s in template.segments)})"
        )
    dropped: Counter = Counter()
    examples: list[str] = []
    utt2spk = data.files.get("utt2spk", {})
    # the words, for scoring, where no segment holds them (e.g. TTS from the phones each voice speaks)
    words = {} if "text" in needed else data.files.get("text", {})
    for utt in data.utt_ids:
        segs = {}
        for seg in template.segments:
            v = _segment_value(data, seg, utt)
            if v is None or (isinstance(v, str) and not v.strip()):
                dropped[f"no {seg.source} entry for segment {seg.name!r}"] += 1
                break
            segs[seg.name] = v
        else:
            row = {"id": utt, "spk": utt2spk.get(utt, utt), "segments": segs}
            if utt in words:
                row["text"] = words[utt]
            examples.append(json.dumps(row, ensure_ascii=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    template.save(out_dir / TEMPLATE)
    with atomic_open(manifest) as f:
        f.write("".join(e + "\n" for e in examples))
    summary = {"task": template.name, "data_dir": str(data_dir), "kept": len(examples), "dropped": dict(dropped)}
    mark_done(manifest, summary)
    log.info("manifest %s: %d examples%s", manifest, len(examples),
             "".join(f"; dropped {n}: {why}" for why, n in dropped.items()))
    return summary


def read_manifest(dir: str | os.PathLike) -> tuple[TaskTemplate, Iterator[dict]]:
    """The template of a manifest dir and an iterator over its examples."""
    dir = Path(dir)
    if not (dir / MANIFEST).is_file():
        raise FileNotFoundError(f"no manifest in {dir} (make it with `speechlm prepare`)")
    template = load_template_file(dir / TEMPLATE)

    def examples() -> Iterator[dict]:
        with open(dir / MANIFEST, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{dir / MANIFEST}:{n}: invalid JSON: {e}") from e

    return template, examples()
