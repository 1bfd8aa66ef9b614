"""speechlm decode: decode a manifest with a model dir (packed, or a training run's export)."""
import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="model dir (speechlm pack output)")
    p.add_argument("--manifest-dir", required=True, help="dir with manifest.jsonl + template.yaml")
    p.add_argument("--out-dir", required=True, help="where text / wav.scp / tokens / timing.json go")
    p.add_argument("--nj", type=int, default=1, help="parallel decoding jobs")
    p.add_argument("--decode-config", help="YAML of decoding options (DecodeConfig, see docs/interfaces.md)")
    p.add_argument("--batch-size", type=int, help="utterances decoded together (overrides the config)")
    p.add_argument("--seed", type=int, help="sampling seed (overrides the config)")
    p.add_argument("--limit", type=int, help="decode only the first N examples")


def main(args: argparse.Namespace) -> int:
    from speechlm.config import load_yaml
    from speechlm.infer.runner import decode_manifest
    from speechlm.utils.threads import set_threads

    set_threads(jobs=args.nj)
    cfg = (load_yaml(args.decode_config) if args.decode_config else None) or {}
    for key in ("batch_size", "seed"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    decode_manifest(args.model_dir, args.manifest_dir, args.out_dir, cfg, args.nj, args.limit)
    return 0
