"""speechlm stats: length statistics of a tokenized manifest dir -> DIR/stats.json (and a log table)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("speechlm.stats")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest-dir", required=True, help="dir with template.yaml and tokens/<segment>.lengths")


def summarize(values) -> dict:
    import numpy as np

    a = np.asarray(list(values), dtype=np.int64)
    if not len(a):
        return {"count": 0}
    return {"count": int(len(a)), "total": int(a.sum()), "min": int(a.min()), "mean": round(float(a.mean()), 1),
            "p50": int(np.percentile(a, 50)), "p90": int(np.percentile(a, 90)), "max": int(a.max())}


def main(args: argparse.Namespace) -> int:
    from speechlm.data.token_archive import read_lengths
    from speechlm.tasks.template import load_template_file
    from speechlm.utils.fileio import write_json

    d = Path(args.manifest_dir)
    template = load_template_file(d / "template.yaml")
    per_seg = {}
    for seg in template.segments:
        if seg.modality == "spk_prompt":
            continue  # prompts reuse the audio archive; their length is capped by max_frames
        path = d / "tokens" / f"{seg.name}.lengths"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `speechlm tokenize --manifest-dir {d}` first")
        per_seg[seg.name] = read_lengths(path)
    utts = set.intersection(*(set(v) for v in per_seg.values())) if per_seg else set()
    prompt = sum(s.max_frames or 0 for s in template.conditions if s.modality == "spk_prompt")
    n_special = 2 + len(template.segments)  # task token, one marker per segment, <eos>
    seq = [sum(v[u] for v in per_seg.values()) + prompt + n_special for u in utts]
    stats = {"task": template.name, "sequence": summarize(seq), **{k: summarize(v.values()) for k, v in per_seg.items()}}
    write_json(d / "stats.json", stats)
    for k, v in stats.items():
        if isinstance(v, dict):
            log.info("%s %-10s %s", d, k, "  ".join(f"{a}={b}" for a, b in v.items()))
    return 0
