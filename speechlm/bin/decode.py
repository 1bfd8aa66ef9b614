"""speechlm decode: decode a manifest, or a plain list of inputs, with a model dir (packed, or a
training run's checkpoint).

    speechlm decode --model-dir exp/x/packed --manifest-dir dump/test/asr --out-dir exp/x/decode_test_asr
    speechlm decode --model-dir exp/x/packed --task asr --input wav.scp --out-dir out/   # "utt wav" lines
    speechlm decode --model-dir exp/x/packed --task plain_tts --input text --out-dir out/  # "utt text" lines

Inputs that cannot be decoded (a missing wav, text without phones, longer than the model's
context, no speaker prompt) are listed in ``OUT/failed`` with the reason; the others are decoded
and the exit status is 1. Running the same command again decodes only the failed ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="model dir (speechlm pack output)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest-dir", help="dir with manifest.jsonl + template.yaml (speechlm prepare)")
    src.add_argument("--input", help="Kaldi-style 'utt value' file (a wav.scp or a text file) for the single "
                                     "condition of --task")
    p.add_argument("--task", help="task of the model to run on --input (one of the model dir's tasks/)")
    p.add_argument("--out-dir", required=True, help="where text / wav.scp / tokens / timing.json go")
    p.add_argument("--nj", type=int, default=1, help="parallel decoding jobs")
    p.add_argument("--shard", type=int, help="decode only shard I of --nj (1-based, the JOB of run.pl/slurm.pl); "
                   "a later call without it merges")
    p.add_argument("--decode-config", help="YAML of decoding options (DecodeConfig, see docs/interfaces.md); "
                   "default: the model dir's decode.yaml, if it has one")
    p.add_argument("--batch-size", type=int, help="utterances decoded together (overrides the config)")
    p.add_argument("--seed", type=int, help="sampling seed (overrides the config)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"),
                   help="decoding precision (overrides the config's precision; default fp32)")
    p.add_argument("--limit", type=int, help="decode only the first N examples")


def manifest_from_input(model_dir: str, task: str | None, input_file: str, out: Path) -> Path:
    """Write ``out/manifest.jsonl`` + ``template.yaml`` for a one-condition task of the model."""
    from speechlm.data.kaldi import read_file
    from speechlm.data.manifest import MANIFEST, TEMPLATE
    from speechlm.tasks.template import load_template_file
    from speechlm.utils.fileio import atomic_open

    tasks = sorted(p.stem for p in (Path(model_dir) / "tasks").glob("*.yaml"))
    if task not in tasks:
        raise ValueError(f"--input needs --task, one of the model's tasks: {', '.join(tasks)} (got {task!r})")
    template = load_template_file(Path(model_dir) / "tasks" / f"{task}.yaml")
    if len(template.conditions) != 1:
        raise ValueError(f"task {task!r} has {len(template.conditions)} conditions "
                         f"({', '.join(s.name for s in template.conditions)}): make a data dir and use "
                         "`speechlm prepare` + --manifest-dir")
    seg = template.conditions[0].name
    out.mkdir(parents=True, exist_ok=True)
    template.save(out / TEMPLATE)
    with atomic_open(out / MANIFEST) as f:
        for utt, value in read_file(input_file).items():
            f.write(json.dumps({"id": utt, "spk": utt, "segments": {seg: value}}, ensure_ascii=False) + "\n")
    return out


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when every utterance was decoded; 1 when some failed (listed in OUT/failed)."""
    import logging

    from speechlm.config import load_yaml
    from speechlm.infer.runner import decode_manifest
    from speechlm.models.config import legacy_decode_precision
    from speechlm.utils.threads import set_threads

    set_threads(1 if args.shard and args.nj > 1 else None, jobs=args.nj)  # a shard: one thread, as the local pool
    config_file = args.decode_config
    if config_file is None and (Path(args.model_dir) / "decode.yaml").is_file():
        config_file = str(Path(args.model_dir) / "decode.yaml")  # the model's own defaults (speechlm pack)
    cfg = (load_yaml(config_file) if config_file else None) or {}
    legacy = legacy_decode_precision(args.model_dir)  # an old model's autocast key: decode as it did
    if legacy and "precision" not in cfg:
        cfg["precision"] = legacy
    for key in ("batch_size", "seed", "precision"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    manifest_dir = args.manifest_dir or str(manifest_from_input(args.model_dir, args.task, args.input,
                                                                Path(args.out_dir) / "input"))
    timing = decode_manifest(args.model_dir, manifest_dir, args.out_dir, cfg, args.nj, args.limit, config_file,
                             args.shard)
    if timing.get("failed"):
        logging.getLogger("speechlm.decode").error(
            "%d of %d utterances FAILED (reasons in %s); the other %d were decoded. Fix the inputs and run the "
            "same command again to decode only those", timing["failed"], timing["failed"] + timing["utterances"],
            Path(args.out_dir) / "failed", timing["utterances"])
        return 1
    return 0
